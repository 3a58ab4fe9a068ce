package org.distill4j.tests;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.cuda.CudaGraph;
import org.distill4j.core.cuda.DeviceBuffer;
import org.distill4j.core.cuda.DeviceInfo;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The foundation on a real GPU, CUDA against the CPU oracle on fresh random inputs: device query,
 * alloc/free, copies both ways, a launch from our fatbin, cuBLAS Sgemm, a cuDNN convolution, and a
 * captured-and-replayed CUDA graph. Tagged "gpu": excluded from ./distill test, run on the lent GPU
 * machine (../shared/device/); skips cleanly when there is no GPU.
 */
@Tag("gpu")
class GpuFoundationTest {
    private static CudaBackend gpu;
    private static final Random RANDOM = new Random();

    @BeforeAll
    static void open() {
        try {
            gpu = CudaBackend.create(0);
        } catch (BackendUnavailableException e) {
            System.out.println("GPU tests skipped: " + e.getMessage());
            Assumptions.abort("GPU tests skipped: " + e.getMessage());
        }
        System.out.println("gpu: " + gpu.context().device());
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
    }

    @Test
    void deviceQuery() {
        DeviceInfo d = gpu.context().device();
        assertTrue(d.computeMajor() >= 8, "Distill4J's fatbin targets sm_80+: " + d);
        assertTrue(d.multiprocessors() > 0 && d.totalMemoryBytes() > 0, d.toString());
        long[] mem = gpu.context().memoryInfo();
        assertTrue(mem[0] > 0 && mem[0] <= mem[1]);
    }

    @Test
    void copiesBothWaysAndDeviceToDevice() {
        for (int n : new int[] {1, 7, 1000, 1 << 20}) {
            float[] x = random(n);
            try (Arena arena = Arena.ofConfined()) {
                DeviceBuffer a = gpu.context().allocate(arena, (long) n * Float.BYTES);
                DeviceBuffer b = gpu.context().allocate(arena, (long) n * Float.BYTES);
                gpu.context().writeFloats(a, x);
                gpu.context().copy(b, 0, a, 0, a.byteSize());
                assertArrayEquals(x, gpu.context().readFloats(b));
                // Pinned staging, asynchronous both ways.
                MemorySegment pinned = gpu.context().allocatePinned(arena, a.byteSize());
                MemorySegment.copy(x, 0, pinned, JAVA_FLOAT, 0, n);
                gpu.context().zero(b);
                gpu.context().copyToDeviceAsync(b, 0, pinned);
                pinned.fill((byte) 0);
                gpu.context().copyToHostAsync(pinned, b, 0);
                gpu.context().synchronize();
                assertArrayEquals(x, pinned.toArray(JAVA_FLOAT));
            }
        }
        assertEquals(0, gpu.context().poolBytesInUse() % 1, "pool query works");
    }

    @Test
    void ourKernelsMatchTheCpuBitForBit() {
        int n = 1_000_003;
        float[] x = random(n), y = random(n);
        float alpha = 1.7f;
        try (Arena arena = Arena.ofConfined()) {
            DeviceBuffer dx = gpu.context().allocate(arena, (long) n * 4), dy = gpu.context().allocate(arena, (long) n * 4);
            gpu.context().writeFloats(dx, x);
            gpu.context().writeFloats(dy, y);
            gpu.elementwise().axpy(alpha, dx.address(), dy.address(), n, gpu.context().stream());
            float[] expected = new float[n];
            for (int i = 0; i < n; i++) expected[i] = Math.fma(alpha, x[i], y[i]);
            assertArrayEquals(expected, gpu.context().readFloats(dy));
            gpu.elementwise().scale(-0.5f, dx.address(), n, gpu.context().stream());
            for (int i = 0; i < n; i++) expected[i] = -0.5f * x[i];
            assertArrayEquals(expected, gpu.context().readFloats(dx));
            gpu.elementwise().fill(dx.address(), 3.25f, n, gpu.context().stream());
            java.util.Arrays.fill(expected, 3.25f);
            assertArrayEquals(expected, gpu.context().readFloats(dx));
        }
    }

    @Test
    void sgemmMatchesCpu() {
        int[][] shapes = {{1, 1, 1}, {7, 13, 5}, {64, 128, 96}, {255, 257, 129}, {1024, 1200, 784}};
        for (CudaBackend.MathMode mode : CudaBackend.MathMode.values()) {
            gpu.setMathMode(mode);
            double tolerance = mode == CudaBackend.MathMode.TF32 ? 5e-3 : 1e-5;
            for (int[] s : shapes) for (boolean ta : new boolean[] {false, true}) for (boolean tb : new boolean[] {false, true}) {
                int m = s[0], n = s[1], k = s[2];
                int lda = ta ? m : k, ldb = tb ? k : n;
                float[] a = random(m * k), b = random(k * n);
                try (Arena arena = Arena.ofConfined()) {
                    MemorySegment ha = arena.allocateFrom(JAVA_FLOAT, a), hb = arena.allocateFrom(JAVA_FLOAT, b);
                    MemorySegment hc = arena.allocate(JAVA_FLOAT, (long) m * n);
                    CpuBlas.sgemm(ta, tb, m, n, k, 1f, ha, lda, hb, ldb, 0f, hc, n);
                    DeviceBuffer da = gpu.context().allocate(arena, (long) a.length * 4), db = gpu.context().allocate(arena, (long) b.length * 4);
                    DeviceBuffer dc = gpu.context().allocate(arena, (long) m * n * 4);
                    gpu.context().writeFloats(da, a);
                    gpu.context().writeFloats(db, b);
                    gpu.sgemm(ta, tb, m, n, k, 1f, da, lda, db, ldb, 0f, dc, n);
                    assertClose(hc.toArray(JAVA_FLOAT), gpu.context().readFloats(dc), tolerance * Math.sqrt(k),
                        "sgemm " + mode + " " + m + "x" + n + "x" + k + " ta=" + ta + " tb=" + tb);
                }
            }
        }
        gpu.setMathMode(CudaBackend.MathMode.TF32);
    }

    @Test
    void cudnnConvolutionMatchesCpu() {
        int[][] cases = {{2, 3, 9, 11, 4, 3, 3, 1, 1, 1, 1}, {4, 16, 32, 32, 8, 3, 3, 1, 1, 2, 2}, {1, 1, 5, 5, 1, 1, 1, 0, 0, 1, 1}};
        for (CudaBackend.MathMode mode : CudaBackend.MathMode.values()) {
            gpu.setMathMode(mode);
            double tolerance = mode == CudaBackend.MathMode.TF32 ? 5e-3 : 1e-5;
            for (int[] t : cases) {
                int n = t[0], c = t[1], h = t[2], w = t[3], k = t[4], r = t[5], s = t[6], ph = t[7], pw = t[8], sh = t[9], sw = t[10];
                int oh = (h + 2 * ph - r) / sh + 1, ow = (w + 2 * pw - s) / sw + 1;
                float[] x = random(n * c * h * w), wt = random(k * c * r * s);
                float[] expected = new float[n * k * oh * ow];
                for (int b = 0; b < n; b++) for (int o = 0; o < k; o++) for (int i = 0; i < oh; i++) for (int j = 0; j < ow; j++) {
                    double sum = 0;
                    for (int ci = 0; ci < c; ci++) for (int u = 0; u < r; u++) for (int v = 0; v < s; v++) {
                        int yy = i * sh - ph + u, xx = j * sw - pw + v;
                        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                        sum += (double) x[((b * c + ci) * h + yy) * w + xx] * wt[((o * c + ci) * r + u) * s + v];
                    }
                    expected[((b * k + o) * oh + i) * ow + j] = (float) sum;
                }
                try (Arena arena = Arena.ofConfined()) {
                    DeviceBuffer dx = gpu.context().allocate(arena, (long) x.length * 4), dw = gpu.context().allocate(arena, (long) wt.length * 4);
                    DeviceBuffer dy = gpu.context().allocate(arena, (long) expected.length * 4);
                    gpu.context().writeFloats(dx, x);
                    gpu.context().writeFloats(dw, wt);
                    int[] out = gpu.conv2dForward(dx, n, c, h, w, dw, k, r, s, ph, pw, sh, sw, dy);
                    assertArrayEquals(new int[] {oh, ow}, out);
                    assertClose(expected, gpu.context().readFloats(dy), tolerance * Math.sqrt(c * r * s), "conv " + mode + " " + java.util.Arrays.toString(t));
                }
            }
        }
        gpu.setMathMode(CudaBackend.MathMode.TF32);
    }

    @Test
    void aCapturedGraphReplaysTheSameWork() {
        int n = 4096;
        float[] x = random(n);
        try (Arena arena = Arena.ofConfined()) {
            DeviceBuffer dx = gpu.context().allocate(arena, n * 4L), dy = gpu.context().allocate(arena, n * 4L);
            gpu.context().writeFloats(dx, x);
            gpu.context().zero(dy);
            gpu.context().synchronize();
            try (CudaGraph g = gpu.capture(() -> {
                gpu.elementwise().axpy(1f, dx.address(), dy.address(), n, gpu.context().stream());
                gpu.elementwise().scale(2f, dy.address(), n, gpu.context().stream());
            })) {
                float[] reference = new float[n];
                for (int replay = 0; replay < 3; replay++) {
                    g.launch();
                    for (int i = 0; i < n; i++) reference[i] = 2f * Math.fma(1f, x[i], reference[i]);
                }
                assertArrayEquals(reference, gpu.context().readFloats(dy));
            }
        }
    }

    @Test
    void aFreedBufferThrowsInsteadOfFaultingTheGpu() {
        Arena arena = Arena.ofConfined();
        DeviceBuffer b = gpu.context().allocate(arena, 1024);
        arena.close();
        gpu.context().synchronize();
        assertThrows(IllegalStateException.class, () -> gpu.elementwise().fill(b.address(), 1f, 256, gpu.context().stream()));
        try (Arena host = Arena.ofConfined()) {
            assertThrows(IllegalStateException.class, () -> gpu.context().copyToHost(host.allocate(1024), b, 0));
        }
    }

    private static float[] random(int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) RANDOM.nextGaussian();
        return v;
    }

    /** max |got - expected| <= tolerance * max(1, max |expected|). */
    private static void assertClose(float[] expected, float[] got, double tolerance, String what) {
        assertEquals(expected.length, got.length, what);
        double scale = 1, worst = 0;
        for (float e : expected) scale = Math.max(scale, Math.abs(e));
        for (int i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(got[i] - expected[i]));
        assertTrue(worst <= tolerance * scale, what + ": max abs error " + worst + " > " + tolerance * scale);
    }
}
