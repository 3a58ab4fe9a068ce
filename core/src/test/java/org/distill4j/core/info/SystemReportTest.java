package org.distill4j.core.info;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.distill4j.bindings.NativeLibraries;
import org.junit.jupiter.api.Test;

class SystemReportTest {
    @Test
    void versionNumbersDecodeLikeTheLibrariesDo() {
        assertEquals("9.24.0", SystemReport.formatCudnn(92400));
        assertEquals("13.1.1", SystemReport.formatCublas(130101));
        assertEquals("9.0.1", SystemReport.formatCudnn(90001));
    }

    /**
     * Every library is reported, found (its detail starts with a file that exists) or missing (with
     * the places searched, each printed under it); the printed lines carry every section once.
     */
    @Test
    void everyLibraryIsReportedFoundOrWithWhereWeLooked() {
        SystemReport r = SystemReport.gather();
        List<String> lines = r.lines();
        String all = String.join("\n", lines);
        assertEquals(NativeLibraries.Library.values().length, r.libraries().size(), all);
        for (SystemReport.Library l : r.libraries()) {
            String line = lines.stream().filter(s -> s.startsWith(String.format("  %-11s %-18s ", l.name(), l.soname()))).findFirst()
                .orElseThrow(() -> new AssertionError("no line for " + l.name() + ":\n" + all));
            if (l.found()) {
                Path file = Path.of(l.detail().split(", ")[0]);
                assertTrue(Files.isRegularFile(file), l.name() + " reported found at " + file + ", which is not a file");
                assertTrue(l.searched().isEmpty(), l.toString());
                assertFalse(line.contains("MISSING"), line);
            } else {
                assertTrue(line.contains("MISSING: ") && !l.detail().isBlank(), line);
                assertFalse(l.searched().isEmpty(), l.name() + " missing without the places searched: " + l);
                for (String place : l.searched()) {
                    assertFalse(place.isBlank(), l.toString());
                    assertTrue(lines.stream().anyMatch(s -> s.endsWith("searched " + place)), "searched place not printed: " + place + "\n" + all);
                }
            }
        }
        // OpenBLAS comes with the build (the natives jar on the class path): found, with its configuration
        SystemReport.Library openblas = r.libraries().stream().filter(l -> l.soname().startsWith("libopenblas")).findFirst().orElseThrow();
        assertTrue(openblas.found() && openblas.detail().contains("OpenBLAS"), openblas.toString());

        assertTrue(lines.getFirst().startsWith("Distill4J " + SystemReport.version()), all);
        assertEquals(1, count(lines, "java:     "), all);
        String cpu = lines.stream().filter(s -> s.startsWith("cpu:")).findFirst().orElseThrow();
        assertTrue(cpu.contains(Runtime.getRuntime().availableProcessors() + " cores") && cpu.contains("fused loss on the "), cpu);
        assertEquals(1, count(lines, "cuda:     driver "), all);
        assertEquals(Math.max(1, r.devices().size()), count(lines, "gpu:      "), all);
        assertEquals(r.devices().isEmpty(), r.noGpuReason() != null, all);
        String kernels = lines.stream().filter(s -> s.startsWith("kernels:  ")).findFirst().orElseThrow();
        assertTrue(kernels.startsWith("kernels:  built by nvcc ") || kernels.startsWith("kernels:  not built: "), kernels);
    }

    private static long count(List<String> lines, String prefix) {
        return lines.stream().filter(s -> s.startsWith(prefix)).count();
    }
}
