package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/** Thousands of allocate/compute/free cycles leave native memory flat (host RSS). */
class CpuLeakTest {
    private static long rssKiB() throws IOException {
        for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
            if (line.startsWith("VmRSS:")) return Long.parseLong(line.replaceAll("\\D+", ""));
        }
        throw new IOException("no VmRSS in /proc/self/status");
    }

    private static void cycles(Backend cpu, int n) {
        for (int i = 0; i < n; i++) {
            try (Tensor a = cpu.empty(DType.F32, 256, 512); Tensor b = cpu.empty(DType.F32, 256, 512);
                 Tensor w = cpu.empty(DType.F32, 512, 64); Tensor c = cpu.empty(DType.F32, 256, 64)) {
                cpu.uniform(a, -1, 1, i, 0);
                cpu.uniform(w, -1, 1, i, 1);
                cpu.activation(Activation.RELU, 0, a, b);
                cpu.gemm(false, false, 1, b, w, 0, c);
            }
        }
    }

    @Test
    void nativeMemoryStaysFlat() throws IOException {
        Assumptions.assumeTrue(Files.isReadable(Path.of("/proc/self/status")), "needs /proc (Linux)");
        Backend cpu = CpuBackend.get();
        cycles(cpu, 300); // warm up: JIT, OpenBLAS buffers, allocator arenas
        long before = rssKiB();
        cycles(cpu, 3000); // 3000 x 1.2 MiB allocated and freed: a leak would add ~3.5 GiB
        long after = rssKiB();
        System.out.println("cpu leak test: RSS " + before / 1024 + " MiB -> " + after / 1024 + " MiB over 3000 cycles");
        assertTrue(after - before < 64 * 1024, "RSS grew by " + (after - before) / 1024 + " MiB over 3000 cycles");
    }
}
