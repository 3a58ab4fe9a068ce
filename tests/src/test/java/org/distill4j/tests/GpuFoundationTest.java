package org.distill4j.tests;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.cuda.CudaGraph;
import org.distill4j.core.cuda.DeviceBuffer;
import org.distill4j.core.cuda.DeviceInfo;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The foundation on a real GPU: device query, alloc/free, copies both ways, launches from our
 * fatbin against the CPU, a captured-and-replayed CUDA graph, and the freed-buffer check. cuBLAS
 * and cuDNN against the CPU oracle are in GpuBackendTest. Tagged "gpu": excluded from ./distill test, run on the lent GPU
 * machine (../shared/device/); skips cleanly when there is no GPU.
 */
@Tag("gpu")
class GpuFoundationTest {
    private static CudaBackend gpu;
    /** Fresh inputs every run, the seed printed; -Ddistill4j.test.seed=N replays one. */
    private static final Random RANDOM = new Random(TestSeeds.seed(GpuFoundationTest.class));

    @BeforeAll
    static void open() {
        gpu = Gpus.openOrSkip();
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
                gpu.context().synchronize();  // the copy reads pinned until it completes
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
