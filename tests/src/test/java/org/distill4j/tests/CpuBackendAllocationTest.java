package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.management.ManagementFactory;
import java.util.Random;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cpu.CpuMemory;
import org.junit.jupiter.api.Test;

/**
 * CPU ops that allocate nothing once warm, measured (here rather than in core's tests, which run as
 * a module that does not read java.management): the thread's allocated-bytes counter for the Java
 * heap, CpuMemory's count for native memory.
 */
class CpuBackendAllocationTest {
    /** Fresh inputs every run; -Ddistill4j.test.seed=N replays one. */
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    /** crossEntropy with a gradient, label smoothing and ignored rows, 32 x 10 (one chunk of rows): no per-row loss array any more. */
    @Test
    void crossEntropyAllocatesNothingOnceWarm() {
        System.out.println("CpuBackendAllocationTest random seed " + seed + " (-Ddistill4j.test.seed replays it)");
        var threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        CpuBackend cpu = CpuBackend.get();
        Random random = new Random(seed);
        int rows = 32, cols = 10;
        float[] x = new float[rows * cols];
        for (int i = 0; i < x.length; i++) x[i] = (float) random.nextGaussian();
        long[] y = new long[rows];
        for (int r = 0; r < rows; r++) y[r] = r % 7 == 0 ? -100 : random.nextInt(cols);
        try (Tensor logits = cpu.fromArray(x, rows, cols); Tensor labels = cpu.empty(DType.I64, rows).copyFrom(y);
             Tensor loss = cpu.empty(DType.F32, 1); Tensor grad = cpu.empty(DType.F32, rows, cols)) {
            for (int i = 0; i < 20_000; i++) cpu.crossEntropy(logits, labels, -100, 0.1f, loss, grad);
            long id = Thread.currentThread().threadId(), nativeBefore = CpuMemory.allocations(), before = threads.getThreadAllocatedBytes(id);
            for (int i = 0; i < 10_000; i++) cpu.crossEntropy(logits, labels, -100, 0.1f, loss, grad);
            long allocated = threads.getThreadAllocatedBytes(id) - before, nativeAllocations = CpuMemory.allocations() - nativeBefore;
            System.out.println("CpuBackendAllocationTest: crossEntropy 32 x 10, 10,000 warm calls: " + allocated + " heap bytes, " + nativeAllocations
                + " native allocations");
            assertTrue(allocated < 1024, allocated + " heap bytes over 10,000 warm calls (seed " + seed + ")");
            assertEquals(0, nativeAllocations, "native allocations over 10,000 warm calls");
            assertTrue(Float.isFinite(loss.item()), "loss " + loss.item());
        }
    }
    /**
     * conv2d forward (with a bias), backward-data and backward-weights (accumulating, with the bias
     * gradient) and max pooling forward and backward on the oneDNN engine: warm calls find their
     * primitive and context buffers and allocate nothing natively, and on the heap nothing but the
     * argument check's ConvGeometry record per convolution call. Skipped where the engine is not
     * oneDNN (the im2col path allocates its column buffer per call).
     */
    @Test
    void onednnConvolutionAndPoolingAllocateNothingOnceWarm() {
        org.junit.jupiter.api.Assumptions.assumeTrue(org.distill4j.core.cpu.CpuBlas.engine() == org.distill4j.core.cpu.CpuEngine.ONEDNN,
            "the CPU engine here is " + org.distill4j.core.cpu.CpuBlas.provider());
        System.out.println("CpuBackendAllocationTest conv seed " + seed + " (-Ddistill4j.test.seed replays it)");
        var threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        CpuBackend cpu = CpuBackend.get();
        Random random = new Random(seed);
        float[] xs = new float[2 * 8 * 9 * 9], ws = new float[8 * 8 * 3 * 3], bs = new float[8];
        for (float[] a : new float[][] {xs, ws, bs}) for (int i = 0; i < a.length; i++) a[i] = (float) random.nextGaussian();
        org.distill4j.core.Conv2dParams conv = org.distill4j.core.Conv2dParams.of(1, 1);
        org.distill4j.core.Pool2dParams pool = org.distill4j.core.Pool2dParams.of(2, 2, 0);
        try (Tensor x = cpu.fromArray(xs, 2, 8, 9, 9); Tensor w = cpu.fromArray(ws, 8, 8, 3, 3); Tensor b = cpu.fromArray(bs, 8);
             Tensor y = cpu.empty(DType.F32, 2, 8, 9, 9); Tensor dx = cpu.empty(DType.F32, 2, 8, 9, 9); Tensor dw = cpu.zeros(DType.F32, 8, 8, 3, 3);
             Tensor db = cpu.zeros(DType.F32, 8); Tensor pooled = cpu.empty(DType.F32, 2, 8, 4, 4)) {
            Runnable step = () -> {
                cpu.conv2d(x, w, b, conv, y);
                cpu.conv2dBackwardData(y, w, conv, dx);
                cpu.conv2dBackwardFilter(x, y, conv, dw, db, true);
                cpu.pool2d(org.distill4j.core.PoolMode.MAX, pool, x, pooled);
                cpu.pool2dBackward(org.distill4j.core.PoolMode.MAX, pool, x, pooled, pooled, dx);
            };
            for (int i = 0; i < 5_000; i++) step.run();
            long id = Thread.currentThread().threadId(), nativeBefore = CpuMemory.allocations(), before = threads.getThreadAllocatedBytes(id);
            for (int i = 0; i < 2_000; i++) step.run();
            long allocated = threads.getThreadAllocatedBytes(id) - before, nativeAllocations = CpuMemory.allocations() - nativeBefore;
            System.out.println("CpuBackendAllocationTest: conv2d fwd/bwd-data/bwd-weights + max pool fwd/bwd on oneDNN, 2,000 warm steps: " + allocated
                + " heap bytes, " + nativeAllocations + " native allocations");
            // What remains is the argument check's geometry record (Shapes.conv returns a ConvGeometry, 48 bytes on a
            // 64-bit JVM with compressed headers or less), one per convolution call: 3 a step. The oneDNN path adds nothing.
            long perStepBound = 3 * 48;
            assertTrue(allocated <= 2_000 * perStepBound + 1024, allocated + " heap bytes over 2,000 warm steps, more than the "
                + perStepBound + " bytes a step of the checks' geometry records (seed " + seed + ")");
            assertEquals(0, nativeAllocations, "native allocations over 2,000 warm steps");
        }
    }
}
