#!/usr/bin/env python3
"""Generates Distill4J's FFM header classes in jextract's shape from small spec files.

jextract itself cannot be fetched on our build machines (see bindings/jextract/ for the script that
regenerates the same API with real jextract wherever it is installed). This generator is our
stand-in: it reads one spec per header (C prototypes copied from the header, the typedefs they use,
the constants and structs we need) and writes one Java class per header with

  * a lazily-initialised holder class per function (static final FunctionDescriptor and
    MethodHandle, so invokeExact is constant-folded by the JIT, as in jextract's output),
  * a static wrapper method per function, named like the C symbol,
  * constants as static finals, with values read from the real header by compiling a tiny C
    program with gcc (as jextract does with clang),
  * struct layouts as StructLayouts with explicit padding and offsets, plus accessors,
  * a HeaderSpec that describes all of the above for the ABI conformance check, which compiles a
    C file generated from that metadata against the real headers (bindings/abi).

Usage: bindgen.py SPEC... --out bindings/src/main/java -I DIR [-I DIR ...]
       bindgen.py --check ...   exits 1 if a generated file differs from what is committed.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

# C scalar spellings -> kind. A kind fixes the Java carrier, the FFM layout and what the conformance
# check asserts about the C type (size and gcc type class).
BUILTIN = {
    "void": "void",
    "int": "int", "unsigned int": "int", "unsigned": "int", "int32_t": "int", "uint32_t": "int",
    "long long": "long", "long long int": "long", "unsigned long long": "long",
    "size_t": "long", "int64_t": "long", "uint64_t": "long", "long": "long", "unsigned long": "long",
    "float": "float", "double": "double",
    "char": "byte", "unsigned char": "byte", "signed char": "byte",
    "short": "short", "unsigned short": "short",
}
JAVA = {"int": "int", "long": "long", "float": "float", "double": "double", "byte": "byte",
        "short": "short", "ptr": "MemorySegment", "dptr": "MemorySegment", "void": "void"}
LAYOUT = {"int": "JAVA_INT", "long": "JAVA_LONG", "float": "JAVA_FLOAT", "double": "JAVA_DOUBLE",
          "byte": "JAVA_BYTE", "short": "JAVA_SHORT", "ptr": "ADDRESS", "dptr": "ADDRESS"}
CKIND = {"int": "INT", "long": "LONG", "float": "FLOAT", "double": "DOUBLE", "byte": "BYTE",
         "short": "SHORT", "ptr": "POINTER", "dptr": "DEVICE_POINTER"}
SIZE = {"int": 4, "long": 8, "float": 4, "double": 8, "byte": 1, "short": 2, "ptr": 8, "dptr": 8}
JAVA_KEYWORDS = {"abstract", "assert", "boolean", "break", "byte", "case", "catch", "char", "class",
                 "const", "continue", "default", "do", "double", "else", "enum", "extends", "final",
                 "finally", "float", "for", "goto", "if", "implements", "import", "instanceof", "int",
                 "interface", "long", "native", "new", "package", "private", "protected", "public",
                 "return", "short", "static", "strictfp", "super", "switch", "synchronized", "this",
                 "throw", "throws", "transient", "try", "void", "volatile", "while", "var", "record"}


class Spec:
    def __init__(self, path):
        self.path = path
        self.package = self.cls = self.library = self.header = None
        self.types = {}        # typedef name -> kind
        self.functions = []    # (name, ret_ctype, [(ctype, pname)], doc)
        self.constants = []    # names
        self.structs = []      # (name, [(ctype, fname, count or None)])
        self.parse()

    def kind(self, ctype):
        t = " ".join(ctype.replace("const ", " ").split())
        if t.endswith("*") or t.endswith("[]"):
            return "ptr"
        if t in self.types:
            return self.types[t]
        if t in BUILTIN:
            return BUILTIN[t]
        if t in dict((s[0], 1) for s in self.structs):
            return "struct"
        raise SystemExit(f"{self.path}: unknown C type '{ctype}' (declare it with 'type NAME KIND')")

    def parse(self):
        text = open(self.path).read()
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        lines = [re.sub(r"#.*", "", l).rstrip() for l in text.splitlines()]
        buf = None
        for line in lines:
            if buf is not None:
                buf += " " + line.strip()
                end = "}" if buf.startswith("struct") else ";"
                if buf.rstrip().endswith(end):
                    self.statement(buf)
                    buf = None
                continue
            s = line.strip()
            if not s:
                continue
            word = s.split()[0]
            if (word == "fn" and not s.endswith(";")) or (word == "struct" and not s.endswith("}")):
                buf = s
            else:
                self.statement(s)
        if buf is not None:
            raise SystemExit(f"{self.path}: unterminated '{buf[:40]}...'")

    def statement(self, s):
        word, _, rest = s.partition(" ")
        rest = rest.strip()
        if word == "package": self.package = rest
        elif word == "class": self.cls = rest
        elif word == "library": self.library = rest
        elif word == "header": self.header = rest
        elif word == "type":
            name, kind = rest.rsplit(None, 1)
            assert kind in JAVA or kind == "struct", f"{self.path}: bad kind {kind}"
            self.types[" ".join(name.split())] = kind
        elif word == "const":
            self.constants.extend(rest.split())
        elif word == "fn":
            m = re.match(r"(.+?)\b(\w+)\s*\((.*)\)\s*;$", rest)
            if not m:
                raise SystemExit(f"{self.path}: cannot parse function '{rest}'")
            ret, name, params = m.group(1).strip(), m.group(2), m.group(3).strip()
            plist = []
            if params and params != "void":
                for p in params.split(","):
                    p = " ".join(p.split())
                    pm = re.match(r"(.+?)\s*\b(\w+)\s*(\[\])?$", p)
                    ctype, pname = pm.group(1).strip(), pm.group(2)
                    if pm.group(3):
                        ctype += " *"
                    ctype = re.sub(r"\s*\*", " *", ctype).replace("* *", "**").strip()
                    plist.append((ctype, pname))
            self.functions.append((name, " ".join(ret.split()), plist, " ".join(s[3:].split())))
        elif word == "struct":
            m = re.match(r"(\w+)\s*\{(.*)\}$", rest)
            if not m:
                raise SystemExit(f"{self.path}: cannot parse struct '{rest}'")
            fields = []
            for f in m.group(2).split(";"):
                f = " ".join(f.split())
                if not f:
                    continue
                fm = re.match(r"(.+?)\s*\b(\w+)\s*(?:\[(\d+)\])?$", f)
                fields.append((fm.group(1).strip(), fm.group(2), int(fm.group(3)) if fm.group(3) else None))
            self.structs.append((m.group(1), fields))
        else:
            raise SystemExit(f"{self.path}: unknown statement '{word}'")


def constant_values(spec, includes):
    """Reads each constant's value from the real header, as jextract would."""
    if not spec.constants:
        return {}
    src = [f"#include <{spec.header}>", "#include <stdio.h>", "int main(void) {"]
    for c in spec.constants:
        src.append(f'  printf("%s %lld\\n", "{c}", (long long)({c}));')
    src.append("  return 0; }")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "c.c"), "w") as f:
            f.write("\n".join(src))
        args = ["gcc", "-w", "-o", os.path.join(d, "c"), os.path.join(d, "c.c")] + [f"-I{i}" for i in includes]
        subprocess.run(args, check=True)
        out = subprocess.run([os.path.join(d, "c")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (l.split() for l in out.splitlines())}


def struct_layout(spec, struct_sizes):
    """Natural-alignment layout (the C ABI's): [(member-expr or None for padding, offset, size, field)]"""
    result = {}
    for name, fields in spec.structs:
        off, align, members = 0, 1, []
        for ctype, fname, count in fields:
            k = spec.kind(ctype) if ctype not in struct_sizes else "struct"
            if k == "struct":
                size, a = struct_sizes[ctype]
                elem = f"{ctype}.LAYOUT"
            else:
                size = a = SIZE[k]
                elem = LAYOUT[k]
            n = count or 1
            if off % a:
                pad = a - off % a
                members.append((None, off, pad, None, None))
                off += pad
            expr = f"MemoryLayout.sequenceLayout({n}, {elem})" if count else elem
            members.append((expr, off, size * n, fname, (k, count, ctype)))
            off += size * n
            align = max(align, a)
        if off % align:
            members.append((None, off, align - off % align, None, None))
            off += align - off % align
        struct_sizes[name] = (off, align)
        result[name] = (members, off)
    return result


def java_name(n):
    return n + "_" if n in JAVA_KEYWORDS else n


def generate(spec, includes, spec_rel):
    values = constant_values(spec, includes)
    struct_sizes = {}
    layouts = struct_layout(spec, struct_sizes)
    o = []
    w = o.append
    w(f"// Generated by bindings/gen/bindgen.py from {spec_rel}. Do not edit: change the spec and")
    w("// run bindings/gen/generate.sh. The ABI conformance check (bindings/abi) proves it against the header.")
    w(f"package {spec.package};")
    w("")
    w("import static java.lang.foreign.ValueLayout.*;")
    w("")
    w("import java.lang.foreign.FunctionDescriptor;")
    w("import java.lang.foreign.MemoryLayout;")
    w("import java.lang.foreign.MemorySegment;")
    w("import java.lang.foreign.StructLayout;")
    w("import java.lang.invoke.MethodHandle;")
    w("import java.util.List;")
    w("import org.distill4j.bindings.Downcalls;")
    w("import org.distill4j.bindings.NativeLibraries;")
    w("import org.distill4j.bindings.NativeLibrary;")
    w("import org.distill4j.bindings.abi.CFunction;")
    w("import org.distill4j.bindings.abi.CKind;")
    w("import org.distill4j.bindings.abi.CConstant;")
    w("import org.distill4j.bindings.abi.CStruct;")
    w("import org.distill4j.bindings.abi.HeaderSpec;")
    w("")
    w(f"/**")
    w(f" * FFM bindings to {{@code {spec.header}}} in jextract's shape: one static method per C function,")
    w(f" * named like its exported symbol, backed by a lazily-initialised holder class.")
    w(f" *")
    w(f" * <p>The library is located by {{@link NativeLibraries}} when this class initialises. When it is")
    w(f" * missing, this class still initialises and every call throws the exception that names the library")
    w(f" * and every place that was searched. A symbol missing from an older library throws on first call.")
    w(f" */")
    w(f"public final class {spec.cls} {{")
    w(f"    private {spec.cls}() {{}}")
    w("")
    w(f"    static final NativeLibrary LIB = NativeLibraries.forBindings(NativeLibraries.Library.{spec.library});")
    w("")
    # constants
    if spec.constants:
        w(f"    // ---- constants (values read from {spec.header} by bindgen.py; asserted by the conformance check)")
        for c in spec.constants:
            v = values[c]
            if -2**31 <= v < 2**31:
                w(f"    public static final int {c} = {v};")
            else:
                w(f"    public static final long {c} = {v}L;")
        w("")
    # structs
    for name, (members, size) in layouts.items():
        fields_c = "; ".join(f"{f[0]} {f[1]}" + (f"[{f[2]}]" if f[2] else "") for f in dict(spec.structs)[name])
        w(f"    /** {{@snippet lang=c : typedef struct {{ {fields_c}; }} {name}; }} ({size} bytes) */")
        w(f"    public static final class {name} {{")
        w(f"        private {name}() {{}}")
        w("")
        w(f"        public static final StructLayout LAYOUT = MemoryLayout.structLayout(")
        parts = []
        for expr, off, sz, fname, info in members:
            if expr is None:
                parts.append(f"            MemoryLayout.paddingLayout({sz})")
            else:
                parts.append(f"            {expr}.withName(\"{fname}\")")
        w(",\n".join(parts))
        w(f"        ).withName(\"{name}\");")
        for expr, off, sz, fname, info in members:
            if expr is None:
                continue
            w(f"        public static final long {fname}$OFFSET = {off};")
        for expr, off, sz, fname, info in members:
            if expr is None:
                continue
            k, count, ctype = info
            if count is None and k in LAYOUT:
                jt, lay = JAVA[k], LAYOUT[k]
                w(f"")
                w(f"        /** {ctype} {fname} */")
                w(f"        public static {jt} {fname}(MemorySegment struct) {{ return struct.get({lay}, {fname}$OFFSET); }}")
                w(f"        public static void {fname}(MemorySegment struct, {jt} value) {{ struct.set({lay}, {fname}$OFFSET, value); }}")
            elif count is None and k == "struct":
                w(f"")
                w(f"        /** The nested {ctype} {fname}, as a slice of {{@code struct}}. */")
                w(f"        public static MemorySegment {fname}(MemorySegment struct) {{ return struct.asSlice({fname}$OFFSET, {ctype}.LAYOUT); }}")
        w(f"    }}")
        w("")
    # functions
    w(f"    // ---- functions")
    for name, ret, params, doc in spec.functions:
        rk = spec.kind(ret)
        pks = [spec.kind(t) for t, _ in params]
        args = ", ".join(LAYOUT[k] for k in pks)
        if rk == "void":
            desc = f"FunctionDescriptor.ofVoid({args})"
        else:
            desc = f"FunctionDescriptor.of({LAYOUT[rk]}{', ' if args else ''}{args})"
        w(f"    private static final FunctionDescriptor {name}$DESC = {desc};")
    w("")
    for name, ret, params, doc in spec.functions:
        rk = spec.kind(ret)
        pks = [spec.kind(t) for t, _ in params]
        w(f"    private static final class {name}$ {{")
        w(f"        static final MethodHandle HANDLE = LIB.downcall(\"{name}\", {name}$DESC);")
        w(f"    }}")
        w("")
        sig = ", ".join(f"{JAVA[k]} {java_name(p)}" for k, (_, p) in zip(pks, params))
        call = ", ".join(java_name(p) for _, p in params)
        w(f"    /** {{@snippet lang=c : {doc.rstrip(';')}; }} */")
        w(f"    public static {JAVA[rk]} {name}({sig}) {{")
        if rk == "void":
            w(f"        try {{ {name}$.HANDLE.invokeExact({call}); }}")
        else:
            w(f"        try {{ return ({JAVA[rk]}) {name}$.HANDLE.invokeExact({call}); }}")
        w(f"        catch (Throwable t) {{ throw Downcalls.rethrow(\"{name}\", t); }}")
        w(f"    }}")
        w("")
    # metadata
    w(f"    /** Everything this class declares, for the ABI conformance check and symbol-resolution tests. */")
    w(f"    public static final HeaderSpec SPEC = new HeaderSpec(\"{spec.header}\", NativeLibraries.Library.{spec.library},")
    w(f"        List.of(")
    fl = []
    for name, ret, params, doc in spec.functions:
        rk = spec.kind(ret)
        ctypes = ", ".join(f"new CFunction.Param(\"{t}\", CKind.{CKIND[spec.kind(t)]})" for t, _ in params)
        rkind = "null" if rk == "void" else f"CKind.{CKIND[rk]}"
        fl.append(f"            new CFunction(\"{name}\", \"{ret}\", {rkind}, List.of({ctypes}), {name}$DESC)")
    w(",\n".join(fl))
    w(f"        ),")
    w(f"        List.of(")
    w(",\n".join(f"            new CConstant(\"{c}\", {c})" for c in spec.constants))
    w(f"        ),")
    w(f"        List.of(")
    w(",\n".join(f"            new CStruct(\"{n}\", {n}.LAYOUT)" for n in layouts))
    w(f"        ));")
    w(f"}}")
    return "\n".join(o) + "\n"


def jextract_args(spec):
    """The jextract @argfile that asks real jextract for the same symbols (bindings/jextract/)."""
    lines = [f"--target-package {spec.package}", f"--header-class-name {spec.cls}"]
    soname = {"CUDA_DRIVER": "libcuda.so.1", "CUBLAS": "libcublas.so.13", "CUBLASLT": "libcublasLt.so.13",
              "CUDNN": "libcudnn.so.9", "OPENBLAS": "libopenblas.so.0", "DNNL": "libdnnl.so.3",
              "DISTILL4J_CPU": "libdistill4j_cpu.so"}[spec.library]
    lines.append(f"--library :{soname}")
    lines += [f"--include-function {f[0]}" for f in spec.functions]
    lines += [f"--include-constant {c}" for c in spec.constants]
    lines += [f"--include-typedef {s[0]}" for s in spec.structs]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("-I", dest="includes", action="append", default=[])
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    stale = []
    for p in a.specs:
        spec = Spec(p)
        rel = os.path.relpath(os.path.abspath(p), root)
        java = generate(spec, a.includes, rel)
        target = os.path.join(a.out, *spec.package.split("."), spec.cls + ".java")
        argfile = os.path.join(root, "bindings", "jextract", spec.cls + ".args")
        outputs = [(target, java), (argfile, jextract_args(spec))]
        if a.check:
            for path, text in outputs:
                old = open(path).read() if os.path.exists(path) else ""
                if old != text:
                    stale.append(path)
            continue
        for path, text in outputs:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        print(f"bindgen: {rel} -> {os.path.relpath(target, root)} ({len(spec.functions)} functions, "
              f"{len(spec.constants)} constants, {len(spec.structs)} structs)")
    if stale:
        print("bindgen: out of date (run bindings/gen/generate.sh): " + ", ".join(stale))
        sys.exit(1)


if __name__ == "__main__":
    main()
