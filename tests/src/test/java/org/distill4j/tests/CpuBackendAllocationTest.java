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
}
