package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.core.Bf16;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/**
 * {@link CpuBlas#gemmBf16}: bfloat16 A and B into a float32 C, on oneDNN and on the Java loop,
 * against a float64 sum of the exact products, on fresh random problems (every transpose pair,
 * padded leading dimensions, beta 0, 1 and other, odd sizes and one row). Seeded:
 * -Ddistill4j.test.seed=N replays a run.
 */
class CpuBlasBf16Test {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    private static short[] randomBf16(Random r, int n) {
        short[] v = new short[n];
        for (int i = 0; i < n; i++) v[i] = Bf16.fromFloat((float) r.nextGaussian());
        return v;
    }

    /** Runs one problem through {@code gemm} and checks every element of C (and that nothing past C's rows changed). */
    private static void check(String where, Random r, boolean onednn) {
        boolean ta = r.nextBoolean(), tb = r.nextBoolean();
        int m = r.nextInt(4) == 0 ? 1 : 1 + r.nextInt(70), n = 1 + r.nextInt(90), k = 1 + r.nextInt(300);
        int lda = (ta ? m : k) + r.nextInt(3), ldb = (tb ? k : n) + r.nextInt(3), ldc = n + r.nextInt(3);
        float beta = switch (r.nextInt(3)) { case 0 -> 0f; case 1 -> 1f; default -> (float) (r.nextDouble() - 0.5); };
        short[] a = randomBf16(r, (ta ? k : m) * lda), b = randomBf16(r, (tb ? n : k) * ldb);
        float[] c = new float[m * ldc];
        for (int i = 0; i < c.length; i++) c[i] = (float) r.nextGaussian();
        try (Arena arena = Arena.ofShared()) { // shared, as the backend's tensors: the Java loop splits rows across threads
            MemorySegment as = arena.allocateFrom(JAVA_SHORT, a), bs = arena.allocateFrom(JAVA_SHORT, b), cs = arena.allocateFrom(JAVA_FLOAT, c);
            if (onednn) {
                if (!OnednnMatmul.gemm(ta, tb, m, n, k, 1f, as, lda, 0, bs, ldb, 0, beta, cs, ldc, 0, 1, dnnl_h.dnnl_bf16)) {
                    // oneDNN declines strided vectors (one row with lda > k when transposed, ...): the Java loop takes those
                    assertTrue(m == 1 || n == 1 || k == 1, where + ": oneDNN declined a plain bf16 problem m=" + m + " n=" + n + " k=" + k);
                    return;
                }
            } else {
                CpuBlas.javaGemmBf16(ta, tb, m, n, k, as, lda, bs, ldb, beta, cs, ldc);
            }
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < ldc; j++) {
                    float got = cs.getAtIndex(JAVA_FLOAT, (long) i * ldc + j);
                    if (j >= n) {
                        assertEquals(c[i * ldc + j], got, where + ": wrote C's padding at [" + i + "," + j + "]");
                        continue;
                    }
                    double sum = 0, mag = 0;
                    for (int p = 0; p < k; p++) {
                        double av = Bf16.toFloat(a[ta ? p * lda + i : i * lda + p]), bv = Bf16.toFloat(b[tb ? j * ldb + p : p * ldb + j]);
                        sum += av * bv;
                        mag += Math.abs(av * bv);
                    }
                    double expected = sum + beta * (double) c[i * ldc + j];
                    double scale = mag + Math.abs(beta * c[i * ldc + j]);
                    // float32 accumulation of exact products: a relative 1e-5 of the terms' magnitude, as for sgemm
                    assertTrue(Math.abs(got - expected) <= 1e-5 * Math.max(scale, 1e-30),
                        where + " m=" + m + " n=" + n + " k=" + k + " ta=" + ta + " tb=" + tb + " beta=" + beta + ": C[" + i + "," + j + "] = " + got
                            + ", expected " + expected);
                }
            }
        }
    }

    @Test
    void onednnMatchesTheFloat64Oracle() {
        Assumptions.assumeTrue(Onednn.available(), "oneDNN not available here: " + Onednn.unavailableReason());
        System.out.println("CpuBlasBf16Test onednn seed " + seed + " (-Ddistill4j.test.seed replays it)");
        Random r = new Random(seed);
        for (int trial = 0; trial < 120; trial++) check("oneDNN trial " + trial + " (seed " + seed + ")", r, true);
    }

    @Test
    void javaLoopMatchesTheFloat64Oracle() {
        System.out.println("CpuBlasBf16Test java seed " + seed + " (-Ddistill4j.test.seed replays it)");
        Random r = new Random(seed);
        for (int trial = 0; trial < 60; trial++) check("Java trial " + trial + " (seed " + seed + ")", r, false);
    }

    @Test
    void argumentsAreCheckedOnceForEveryEngine() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocate(2L * 4 * 3), b = arena.allocate(2L * 3 * 5), c = arena.allocate(4L * 4 * 5);
            CpuBlas.gemmBf16(false, false, 4, 5, 3, a, 3, b, 5, 0f, c, 5); // fits
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> CpuBlas.gemmBf16(false, false, 4, 5, 4, a, 4, b, 5, 0f, c, 5));
            assertTrue(e.getMessage().contains("A holds 24 bytes"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> CpuBlas.gemmBf16(false, false, 4, 5, 3, a, 2, b, 5, 0f, c, 5));
            assertTrue(e.getMessage().contains("leading dimension of A"), e.getMessage());
        }
    }
}
