package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicIntegerArray;
import org.junit.jupiter.api.Test;

/** IntraOpPool: every part runs once, on the caller or a helper; errors reach the caller; one row's gemv split equals the unsplit one. */
class IntraOpPoolTest {
    private final IntraOpPool pool = IntraOpPool.shared();

    @Test
    void everyPartRunsExactlyOnceForOneCallerAndForMany() throws Exception {
        assertEquals(Math.max(1, Runtime.getRuntime().availableProcessors()), pool.parallelism());
        for (int parts : new int[] {1, 2, 3, 7}) {
            for (int call = 0; call < 200; call++) {
                AtomicIntegerArray ran = new AtomicIntegerArray(parts);
                boolean[] inPart = new boolean[parts];
                pool.run(parts, (p, n) -> {
                    assertEquals(parts, n);
                    inPart[p] = IntraOpPool.inPart();
                    ran.incrementAndGet(p);
                });
                for (int p = 0; p < parts; p++) {
                    assertEquals(1, ran.get(p), "part " + p + " of " + parts + ", call " + call);
                    assertTrue(inPart[p], "a part runs with inPart() (oneDNN single-threaded)");
                }
            }
        }
        assertFalse(IntraOpPool.inPart(), "outside run the caller is not in a part");
        // Eight callers at once: each call's parts run once each (most calls find another's job on offer and run alone).
        ExecutorService callers = Executors.newFixedThreadPool(8);
        List<Future<?>> fs = new ArrayList<>();
        for (int t = 0; t < 8; t++) {
            fs.add(callers.submit(() -> {
                for (int call = 0; call < 500; call++) {
                    AtomicIntegerArray ran = new AtomicIntegerArray(4);
                    pool.run(4, (p, n) -> ran.incrementAndGet(p));
                    for (int p = 0; p < 4; p++) assertEquals(1, ran.get(p), "part " + p);
                }
                return null;
            }));
        }
        for (Future<?> f : fs) f.get();
        callers.shutdown();
    }

    @Test
    void aFailingPartReachesTheCallerAfterTheOthersFinish() {
        for (int failing = 0; failing < 2; failing++) {
            int bad = failing;
            AtomicIntegerArray ran = new AtomicIntegerArray(2);
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> pool.run(2, (p, n) -> {
                ran.incrementAndGet(p);
                if (p == bad) throw new IllegalStateException("part " + p + " failed");
            }));
            assertEquals("part " + bad + " failed", e.getMessage());
            assertEquals(1, ran.get(1 - bad), "the other part still ran");
        }
        assertThrows(IllegalArgumentException.class, () -> pool.run(0, (p, n) -> {}));
        // The pool still serves calls afterwards.
        AtomicIntegerArray ran = new AtomicIntegerArray(2);
        pool.run(2, (p, n) -> ran.incrementAndGet(p));
        assertEquals(1, ran.get(0));
        assertEquals(1, ran.get(1));
    }

    /**
     * One row through a linear layer (CpuBlas.sgemm with m = 1, W^T: OpenBLAS's gemv) on a thread
     * bound to the pool splits W's rows into blocks: the same numbers as the unbound call, for sizes
     * above and below the split threshold. Each output is the same dot product, but OpenBLAS's gemv
     * kernel sums a row in another order when the row falls in a group's remainder (rows are taken in
     * small groups), and a split moves the block edges. CpuBlas puts the edges on multiples of 16 rows,
     * which on this project's machines gives the unsplit bits; that depends on the CPU's OpenBLAS
     * kernel, so the test asks only that the two agree to float32 summation error: a bound on the magnitudes summed (k * 2^-24 * sum |alpha x_i w_i| + |beta c|,
     * the standard forward error of a float32 dot product, scaled down by 8 because the realised
     * error grows like sqrt(k)), not on the result, which cancellation can make small (CI once saw
     * 1.3822174 against 1.3822031 for a 1100-term sum whose terms summed to about 1,300 in magnitude).
     * A wrong block (a row skipped, taken twice or against the wrong x) is off by the size of a term.
     */
    @Test
    void aBoundThreadsGemvSplitsIntoTheSameNumbers() {
        long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
        System.out.println("IntraOpPoolTest seed " + seed + " (replay with -Ddistill4j.test.seed=" + seed + ")");
        Random r = new Random(seed);
        CpuEngine fallback = CpuBlas.fallback();
        if (fallback != CpuEngine.OPENBLAS) return; // the split is OpenBLAS's gemv path; nothing to compare elsewhere
        int[][] shapes = {{800, 784}, {1000, 333}, {130, 1100}, {10, 800}, {64, 64}};
        try (Arena arena = Arena.ofShared(); Arena confined = Arena.ofConfined()) {
            for (int[] s : shapes) {
                int n = s[0], k = s[1];
                MemorySegment w = arena.allocate((long) n * k * 4, 64), x = arena.allocate(k * 4L, 64);
                MemorySegment plain = arena.allocate(n * 4L, 64), split = arena.allocate(n * 4L, 64);
                MemorySegment ownThread = confined.allocate(n * 4L, 64); // a confined output: the caller keeps the work
                for (long i = 0; i < (long) n * k; i++) w.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
                for (int i = 0; i < k; i++) x.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
                for (int i = 0; i < n; i++) {
                    plain.setAtIndex(ValueLayout.JAVA_FLOAT, i, 0.5f * i);
                    split.setAtIndex(ValueLayout.JAVA_FLOAT, i, 0.5f * i);
                    ownThread.setAtIndex(ValueLayout.JAVA_FLOAT, i, 0.5f * i);
                }
                CpuBlas.sgemmOn(fallback, false, true, 1, n, k, 1.5f, x, k, w, k, 0.25f, plain, n);
                pool.bind();
                try {
                    assertSame(pool, IntraOpPool.bound());
                    CpuBlas.sgemmOn(fallback, false, true, 1, n, k, 1.5f, x, k, w, k, 0.25f, split, n);
                    CpuBlas.sgemmOn(fallback, false, true, 1, n, k, 1.5f, x, k, w, k, 0.25f, ownThread, n);
                } finally {
                    IntraOpPool.unbind();
                }
                for (int i = 0; i < n; i++) {
                    float a = plain.getAtIndex(ValueLayout.JAVA_FLOAT, i), b = split.getAtIndex(ValueLayout.JAVA_FLOAT, i);
                    double magnitude = 0.25 * 0.5 * i; // |beta * c_i|
                    for (int j = 0; j < k; j++) {
                        magnitude += Math.abs(1.5 * x.getAtIndex(ValueLayout.JAVA_FLOAT, j) * w.getAtIndex(ValueLayout.JAVA_FLOAT, (long) i * k + j));
                    }
                    double bound = k * 0x1p-24 * magnitude / 8;
                    assertTrue(Math.abs(a - b) <= bound, n + "x" + k + " output " + i + ": " + b + " split, " + a + " whole, bound " + bound);
                    assertEquals(a, ownThread.getAtIndex(ValueLayout.JAVA_FLOAT, i), n + "x" + k + " output " + i + " into confined memory (not split)");
                }
            }
        }
    }
}
