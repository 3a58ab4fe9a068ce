package org.distill4j.bindings;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.StructLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import org.distill4j.bindings.abi.CConstant;
import org.distill4j.bindings.abi.CFunction;
import org.distill4j.bindings.abi.CKind;
import org.distill4j.bindings.abi.CStruct;
import org.distill4j.bindings.abi.ConformanceSource;
import org.distill4j.bindings.abi.HeaderSpec;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The ABI conformance check: a C file generated from the Java binding metadata, compiled by gcc
 * against the real headers. A wrong signature, constant or struct layout fails the build here.
 */
class HeaderConformanceTest {
    private static Map<String, Path> headers;
    private static List<HeaderSpec> present;
    private static List<String> skipped;

    @BeforeAll
    static void findHeaders() throws Exception {
        Assumptions.assumeTrue(Headers.haveGcc(), "ABI conformance skipped: gcc not found");
        headers = Headers.find();
        present = new ArrayList<>();
        skipped = new ArrayList<>();
        for (HeaderSpec s : BoundHeaders.all()) {
            if (headers.containsKey(s.header())) present.add(s);
            else skipped.add(s.header());
        }
        if (!skipped.isEmpty()) {
            System.out.println("ABI: SKIPPED for " + skipped + ": header not found (pip install nvidia-cublas nvidia-cudnn-cu13 "
                + "nvidia-cuda-runtime, or set DISTILL4J_INCLUDE; see bindings/gen/find-headers.sh)");
        }
        Assumptions.assumeFalse(present.isEmpty(), "ABI conformance skipped: no bound header found on this machine");
    }

    private static List<Path> includeDirs() {
        return headers.values().stream().distinct().toList();
    }

    private static Headers.Gcc compile(String name, List<HeaderSpec> specs) throws Exception {
        Path dir = Headers.moduleDir().resolve("target/abi");
        Files.createDirectories(dir);
        Path c = dir.resolve(name + ".c");
        Files.writeString(c, ConformanceSource.generate(specs));
        return Headers.gcc(c, dir.resolve(name + ".o"), includeDirs());
    }

    @Test
    void everyBindingMatchesTheRealHeaders() throws Exception {
        Headers.Gcc r = compile("conformance", present);
        assertEquals(0, r.exit(), "the Java bindings disagree with the C headers:\n" + r.output());
        ConformanceSource.Counts n = ConformanceSource.counts(present);
        String against = present.stream().map(s -> s.header() + " (" + headers.get(s.header()) + ")").collect(Collectors.joining(", "));
        System.out.println("ABI: " + n.functions() + " functions, " + n.constants() + " constants, " + n.structs()
            + " structs checked against " + against);
    }

    /** The check can fail: a cublasSgemm_v2 whose ldb the Java side declares as a C long must not compile. */
    @Test
    void aWrongParameterTypeFailsTheCompile() throws Exception {
        HeaderSpec cublas = spec("cublas_v2.h");
        CFunction sgemm = cublas.functions().stream().filter(f -> f.name().equals("cublasSgemm_v2")).findFirst().orElseThrow();
        List<CFunction.Param> params = new ArrayList<>(sgemm.params());
        params.set(10, new CFunction.Param("long", CKind.LONG)); // ldb: int in cublas_api.h
        List<MemoryLayout> layouts = new ArrayList<>(sgemm.descriptor().argumentLayouts());
        layouts.set(10, CKind.LONG.layout());
        CFunction wrong = new CFunction(sgemm.name(), sgemm.returnType(), sgemm.returnKind(), params,
            FunctionDescriptor.of(sgemm.descriptor().returnLayout().orElseThrow(), layouts.toArray(MemoryLayout[]::new)));
        Headers.Gcc r = compile("negative-signature", List.of(new HeaderSpec(cublas.header(), cublas.library(), List.of(wrong), List.of(), List.of())));
        assertNotEquals(0, r.exit(), "gcc accepted a cublasSgemm_v2 with a long ldb");
        assertTrue(r.output().contains("cublasSgemm_v2"), r.output());
    }

    /** A size mismatch behind a matching C type name fails too: size_t declared as a 4-byte INT. */
    @Test
    void aWrongLayoutForTheRightTypeFailsTheCompile() throws Exception {
        HeaderSpec cuda = spec("cuda.h");
        CFunction alloc = cuda.functions().stream().filter(f -> f.name().equals("cuMemAlloc_v2")).findFirst().orElseThrow();
        List<CFunction.Param> params = List.of(alloc.params().get(0), new CFunction.Param("size_t", CKind.INT));
        CFunction wrong = new CFunction(alloc.name(), alloc.returnType(), alloc.returnKind(), params, alloc.descriptor());
        Headers.Gcc r = compile("negative-layout", List.of(new HeaderSpec(cuda.header(), cuda.library(), List.of(wrong), List.of(), List.of())));
        assertNotEquals(0, r.exit(), "gcc accepted size_t passed as a 4-byte int");
        assertTrue(r.output().contains("size_t"), r.output());
    }

    @Test
    void aWrongConstantOrStructOffsetFailsTheCompile() throws Exception {
        HeaderSpec cuda = spec("cuda.h");
        Headers.Gcc constant = compile("negative-constant", List.of(new HeaderSpec(cuda.header(), cuda.library(), List.of(),
            List.of(new CConstant("CUDA_ERROR_OUT_OF_MEMORY", 3)), List.of())));
        assertNotEquals(0, constant.exit(), "gcc accepted CUDA_ERROR_OUT_OF_MEMORY == 3");
        StructLayout shifted = MemoryLayout.structLayout(MemoryLayout.paddingLayout(4), CKind.INT.layout().withName("type"),
            CKind.INT.layout().withName("id"), MemoryLayout.paddingLayout(4));
        Headers.Gcc struct = compile("negative-struct", List.of(new HeaderSpec(cuda.header(), cuda.library(), List.of(), List.of(),
            List.of(new CStruct("CUmemLocation", shifted)))));
        assertNotEquals(0, struct.exit(), "gcc accepted a CUmemLocation with shifted fields");
    }

    /** CudaBackend reads all three cuDNN AlgoPerf arrays with one reader: their members must be identical. */
    @Test
    void theThreeCudnnAlgoPerfStructsShareOneLayout() {
        var fwd = org.distill4j.bindings.cudnn.cudnn_h.cudnnConvolutionFwdAlgoPerf_t.LAYOUT.memberLayouts();
        assertEquals(fwd, org.distill4j.bindings.cudnn.cudnn_h.cudnnConvolutionBwdDataAlgoPerf_t.LAYOUT.memberLayouts());
        assertEquals(fwd, org.distill4j.bindings.cudnn.cudnn_h.cudnnConvolutionBwdFilterAlgoPerf_t.LAYOUT.memberLayouts());
    }

    /** The Java side agrees with itself: every descriptor's layouts are its parameters' kinds' layouts. */
    @Test
    void descriptorsMatchTheDeclaredKinds() {
        for (HeaderSpec h : BoundHeaders.all()) {
            for (CFunction f : h.functions()) {
                List<MemoryLayout> expected = f.params().stream().map(p -> p.kind().layout()).toList();
                assertEquals(expected, f.descriptor().argumentLayouts(), h.header() + " " + f.name());
                assertEquals(f.returnKind() == null ? java.util.Optional.empty() : java.util.Optional.of(f.returnKind().layout()),
                    f.descriptor().returnLayout(), h.header() + " " + f.name() + " return");
            }
        }
    }

    private static HeaderSpec spec(String header) {
        Assumptions.assumeTrue(headers.containsKey(header), header + " not found on this machine");
        return BoundHeaders.all().stream().filter(s -> s.header().equals(header)).findFirst().orElseThrow();
    }
}
