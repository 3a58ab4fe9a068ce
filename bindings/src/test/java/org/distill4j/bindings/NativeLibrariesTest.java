package org.distill4j.bindings;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.FunctionDescriptor;
import java.lang.invoke.MethodHandle;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Library discovery and its errors: every failure names the library and what was searched. */
class NativeLibrariesTest {
    @TempDir
    Path tmp;

    @Test
    void anExplicitPathThatDoesNotExistIsAnErrorNamingTheSetting() {
        String key = NativeLibraries.Library.CUDNN.pathProperty();
        System.setProperty(key, tmp.resolve("nope/libcudnn.so.9").toString());
        try {
            NativeLibrary lib = NativeLibraries.open(NativeLibraries.Library.CUDNN);
            assertFalse(lib.isLoaded());
            String msg = lib.failure().orElseThrow().getMessage();
            assertTrue(msg.contains(key) && msg.contains("does not exist"), msg);
        } finally {
            System.clearProperty(key);
        }
    }

    @Test
    void aMissingDependencyIsNamed() throws Exception {
        // A soname no other test loads: glibc would satisfy the dependency from an already-loaded copy.
        Path top = buildLibraryWithDependency("libd4jmissingdep.so.1");
        Files.delete(tmp.resolve("libd4jmissingdep.so.1"));
        String key = NativeLibraries.Library.CUDNN.pathProperty();
        System.setProperty(key, top.toString());
        try {
            NativeLibrary lib = NativeLibraries.open(NativeLibraries.Library.CUDNN);
            String msg = lib.failure().orElseThrow().getMessage();
            assertTrue(msg.contains("libd4jmissingdep.so.1") && msg.contains("is missing"), msg);
        } finally {
            System.clearProperty(key);
        }
    }

    @Test
    void aMissingSymbolThrowsOnCallNotAtLoad() throws Throwable {
        Path top = buildLibraryWithDependency("libd4jdep.so.1");
        NativeLibrary lib = NativeLibrary.opened(NativeLibraries.Library.CUDNN, top, NativeLibrary.dlopen(top.toString()));
        MethodHandle present = lib.downcall("d4j_top", FunctionDescriptor.of(JAVA_INT));
        assertEquals(42, (int) present.invokeExact());
        MethodHandle absent = lib.downcall("d4j_no_such_function", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        NativeLibraryException e = assertThrows(NativeLibraryException.class, () -> { int r = (int) absent.invokeExact(1); });
        assertTrue(e.getMessage().contains("d4j_no_such_function"), e.getMessage());
    }

    @Test
    void callsIntoAMissingLibraryThrowTheSearchReport() {
        NativeLibraryException why = new NativeLibraryException(NativeLibraries.Library.CUDA_DRIVER,
            "CUDA driver (libcuda.so.1) not found; searched: here, there", List.of("here", "there"));
        NativeLibrary missing = NativeLibrary.missing(NativeLibraries.Library.CUDA_DRIVER, why);
        MethodHandle h = missing.downcall("cuInit", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        NativeLibraryException e = assertThrows(NativeLibraryException.class, () -> { int r = (int) h.invokeExact(0); });
        assertEquals(List.of("here", "there"), e.searched());
        assertThrows(NativeLibraryException.class, () -> { throw missing.failure().orElseThrow(); });
    }

    /** The real thing on a machine without the driver: the generated binding throws, naming libcuda.so.1. */
    @Test
    void theDriverBindingThrowsACleanErrorWhenThereIsNoDriver() {
        Assumptions.assumeFalse(NativeLibraries.forBindings(NativeLibraries.Library.CUDA_DRIVER).isLoaded(), "a CUDA driver is installed here");
        NativeLibraryException e = assertThrows(NativeLibraryException.class, () -> org.distill4j.bindings.cuda.cuda_h.cuInit(0));
        assertTrue(e.getMessage().contains("libcuda.so.1") && e.getMessage().contains("Searched"), e.getMessage());
        assertFalse(e.searched().isEmpty());
    }

    @Test
    void openBlasLoadsFromTheNativesJar() {
        NativeLibrary lib = NativeLibraries.load(NativeLibraries.Library.OPENBLAS);
        assertTrue(lib.find("cblas_sgemm").isPresent());
    }

    /** Committed generated sources are what bindgen.py makes from the specs and today's headers. */
    @Test
    void generatedBindingsAreUpToDate() throws Exception {
        Map<String, Path> headers = Headers.find();
        // Every header, not a count: a count of 5 went stale when distill4j_cpu.h made it 6 and skipped this check everywhere.
        Assumptions.assumeTrue(headers.keySet().containsAll(Headers.ALL), "generated-source check skipped: not every header is present " + headers.keySet());
        Process p = new ProcessBuilder("bash", Headers.moduleDir().resolve("gen/generate.sh").toString(), "--check")
            .redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(300, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), out);
    }

    /** Builds libd4jtop.so (exports d4j_top() == 42) linked against a library with soname {@code dep}, both in tmp. */
    private Path buildLibraryWithDependency(String dep) throws Exception {
        Assumptions.assumeTrue(Headers.haveGcc(), "gcc not found");
        Files.writeString(tmp.resolve("dep.c"), "int d4j_dep(void) { return 41; }\n");
        Files.writeString(tmp.resolve("top.c"), "int d4j_dep(void);\nint d4j_top(void) { return d4j_dep() + 1; }\n");
        run("gcc", "-shared", "-fPIC", "-Wl,-soname," + dep, "-o", tmp.resolve(dep).toString(), tmp.resolve("dep.c").toString());
        run("gcc", "-shared", "-fPIC", "-o", tmp.resolve("libd4jtop.so").toString(), tmp.resolve("top.c").toString(),
            tmp.resolve(dep).toString(), "-Wl,-rpath,$ORIGIN");
        return tmp.resolve("libd4jtop.so");
    }

    private static void run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), String.join(" ", cmd) + "\n" + out);
    }
}
