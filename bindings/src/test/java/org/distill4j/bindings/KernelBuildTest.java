package org.distill4j.bindings;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.distill4j.kernels.KernelImage;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** native/build-kernels.sh: with nvcc a spill-free fatbin and a ptxas report; without, a clean "not built". */
class KernelBuildTest {
    @TempDir
    Path tmp;

    private static Path nativeDir() {
        return Headers.moduleDir().resolve("../native").normalize();
    }

    private int build(Path target, String nvcc) throws Exception {
        ProcessBuilder pb = new ProcessBuilder("bash", nativeDir().resolve("build-kernels.sh").toString(),
            nativeDir().resolve("src/main/cuda").toString(), target.toString()).redirectErrorStream(true);
        if (nvcc != null) pb.environment().put("NVCC", nvcc);
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(600, TimeUnit.SECONDS), out);
        System.out.print(out);
        return p.exitValue();
    }

    private static Properties props(Path target) throws Exception {
        Properties p = new Properties();
        try (Reader r = Files.newBufferedReader(target.resolve("classes/org/distill4j/kernels/kernels.properties"))) {
            p.load(r);
        }
        return p;
    }

    @Test
    void withoutNvccTheBuildSucceedsAndSaysWhy() throws Exception {
        assertEquals(0, build(tmp, "/nonexistent/nvcc"));
        Properties p = props(tmp);
        assertEquals("false", p.getProperty("built"));
        assertTrue(p.getProperty("reason").contains("nvcc not found"), p.getProperty("reason"));
        assertFalse(Files.exists(tmp.resolve("classes/org/distill4j/kernels/distill4j.fatbin")));
    }

    @Test
    void withNvccEveryArchitectureIsBuiltWithoutSpills() throws Exception {
        Assumptions.assumeTrue(KernelImage.built(), "this build has no nvcc: " + KernelImage.notBuiltReason());
        assertEquals(0, build(tmp, null));
        Properties p = props(tmp);
        assertEquals("true", p.getProperty("built"));
        assertEquals("80 86 89 90 100 120", p.getProperty("archs"));
        String report = Files.readString(tmp.resolve("ptxas-report.txt"));
        for (String arch : p.getProperty("archs").split(" ")) {
            assertTrue(report.contains("for 'sm_" + arch + "'"), "no ptxas entry for sm_" + arch);
        }
        assertFalse(report.matches("(?s).*[1-9][0-9]* bytes spill (stores|loads).*"), "register spills:\n" + report);
        byte[] fatbin = Files.readAllBytes(tmp.resolve("classes/org/distill4j/kernels/distill4j.fatbin"));
        // A fatbin starts with its magic number 0xBA55ED50 (little-endian).
        assertEquals(0x50, fatbin[0] & 0xff);
        assertEquals(0xED, fatbin[1] & 0xff);
        assertEquals(0x55, fatbin[2] & 0xff);
        assertEquals(0xBA, fatbin[3] & 0xff);
        assertTrue(KernelImage.kernelNames().containsAll(java.util.List.of("d4j_fill_f32", "d4j_axpy_f32", "d4j_scale_f32")));
        assertTrue(KernelImage.fatbin().orElseThrow().length > 0);
    }
}
