package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * oneDNN's matmul engine against a float64 oracle written from the definition, on fresh random
 * problems: every transpose pair, padded leading dimensions, strided and broadcast batches, alpha
 * and beta; from several threads at once, with and without single-threaded holds. Seeded:
 * -Ddistill4j.test.seed=N replays a run.
 */
class OnednnMatmulTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    @BeforeAll
    static void needsOnednn() {
        Assumptions.assumeTrue(Onednn.available(), "oneDNN not available here: " + Onednn.unavailableReason());
    }

    /** One problem: C_i = alpha op(A_i) op(B_i) + beta C_i, X_i at i * strideX. */
    record Problem(boolean transA, boolean transB, int m, int n, int k, float alpha, float beta, int lda, long strideA, int ldb, long strideB,
                   int ldc, long strideC, int batch, float[] a, float[] b, float[] c) {
        static Problem random(Random r, int maxDim) {
            boolean ta = r.nextBoolean(), tb = r.nextBoolean();
            int m = 1 + r.nextInt(maxDim), n = 1 + r.nextInt(maxDim), k = 1 + r.nextInt(maxDim), batch = r.nextInt(3) == 0 ? 1 : 1 + r.nextInt(4);
            int lda = (ta ? m : k) + (r.nextBoolean() ? 0 : r.nextInt(5)), ldb = (tb ? k : n) + (r.nextBoolean() ? 0 : r.nextInt(5));
            int ldc = n + (r.nextBoolean() ? 0 : r.nextInt(5));
            long aMatrix = (long) (ta ? k : m) * lda, bMatrix = (long) (tb ? n : k) * ldb, cMatrix = (long) m * ldc;
            long strideA = r.nextInt(5) == 0 ? 0 : aMatrix + r.nextInt(3), strideB = r.nextInt(5) == 0 ? 0 : bMatrix + r.nextInt(3);
            long strideC = cMatrix + r.nextInt(3);
            float alpha = r.nextBoolean() ? 1f : (float) (0.25 + r.nextDouble());
            float beta = switch (r.nextInt(3)) { case 0 -> 0f; case 1 -> 1f; default -> (float) (r.nextDouble() - 0.5); };
            return new Problem(ta, tb, m, n, k, alpha, beta, lda, strideA, ldb, strideB, ldc, strideC, batch,
                gaussian(r, (batch - 1) * strideA + aMatrix), gaussian(r, (batch - 1) * strideB + bMatrix), gaussian(r, (batch - 1) * strideC + cMatrix));
        }

        /**
         * A plain problem, which oneDNN must take: no strided-vector operand and not both operands
         * broadcast (those two the engine sends to the fallback).
         */
        boolean plain() {
            return m > 1 && n > 1 && k > 1 && (batch == 1 || strideA != 0 || strideB != 0);
        }

        /** Runs it on oneDNN; false when declined. Checks C against float64 (|error| <= 1e-5 of the terms' magnitude) when run. */
        boolean runAndCheck(String where) {
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment as = arena.allocateFrom(JAVA_FLOAT, a), bs = arena.allocateFrom(JAVA_FLOAT, b), cs = arena.allocateFrom(JAVA_FLOAT, c);
                if (!OnednnMatmul.sgemm(transA, transB, m, n, k, alpha, as, lda, strideA, bs, ldb, strideB, beta, cs, ldc, strideC, batch)) {
                    for (int i = 0; i < c.length; i++) assertEquals(c[i], cs.getAtIndex(JAVA_FLOAT, i), where + ": a declined problem wrote C");
                    return false;
                }
                boolean[] written = new boolean[c.length];
                for (int i = 0; i < batch; i++) {
                    for (int row = 0; row < m; row++) {
                        for (int j = 0; j < n; j++) {
                            double sum = 0, mag = 0;
                            for (int p = 0; p < k; p++) {
                                double av = a[(int) (i * strideA + (transA ? (long) p * lda + row : (long) row * lda + p))];
                                double bv = b[(int) (i * strideB + (transB ? (long) j * ldb + p : (long) p * ldb + j))];
                                sum += av * bv;
                                mag += Math.abs(av * bv);
                            }
                            int at = (int) (i * strideC + (long) row * ldc + j);
                            double expected = alpha * sum + beta * (double) c[at];
                            double scale = Math.abs(alpha) * mag + Math.abs(beta * c[at]);
                            double got = cs.getAtIndex(JAVA_FLOAT, at);
                            assertTrue(Math.abs(got - expected) <= 1e-5 * Math.max(scale, 1e-30) + 1e-30,
                                where + " " + this + ": C_" + i + "[" + row + "," + j + "] = " + got + ", expected " + expected);
                            written[at] = true;
                        }
                    }
                }
                for (int i = 0; i < c.length; i++) {
                    if (!written[i]) assertEquals(c[i], cs.getAtIndex(JAVA_FLOAT, i), where + ": oneDNN wrote outside C at element " + i);
                }
                return true;
            }
        }

        @Override
        public String toString() {
            return "Problem[transA=" + transA + ", transB=" + transB + ", m=" + m + ", n=" + n + ", k=" + k + ", alpha=" + alpha + ", beta=" + beta
                + ", lda=" + lda + ", strideA=" + strideA + ", ldb=" + ldb + ", strideB=" + strideB + ", ldc=" + ldc + ", strideC=" + strideC
                + ", batch=" + batch + "]";
        }
    }

    /**
     * `distill info` says whether the graph API is there; the bundled oneDNN 3.8.1 (bytedeco
     * 1.5.12) was built without it, so issue 23's fused attention through it cannot run on this
     * library. Should a newer jar bring it, this fails and says so.
     */
    @Test
    void theDescriptionSaysWhetherTheGraphApiIsThere() {
        org.junit.jupiter.api.Assumptions.assumeTrue(Onednn.available(), "oneDNN is not loaded here");
        String d = Onednn.description();
        assertTrue(d.endsWith(Onednn.hasGraphApi() ? "graph API present (not used)" : "graph API not in this build"), d);
        if (d.contains("dnnl-3.8.1-1.5.12")) {
            assertFalse(Onednn.hasGraphApi(), "the bundled libdnnl now exports the graph API: fused attention (issue 23) can be tried: " + d);
        }
    }

    @Test
    void randomProblemsMatchTheFloat64Oracle() {
        System.out.println("OnednnMatmulTest random seed " + seed + " (-Ddistill4j.test.seed replays it)");
        Random r = new Random(seed);
        int ran = 0, declined = 0;
        for (int trial = 0; trial < 300; trial++) {
            Problem p = Problem.random(r, trial % 10 == 0 ? 160 : 24);
            boolean took = p.runAndCheck("trial " + trial + " (seed " + seed + ")");
            if (took) ran++;
            else {
                declined++;
                assertFalse(p.plain(), "oneDNN declined a plain problem " + p + " (seed " + seed + ")");
            }
        }
        System.out.println("OnednnMatmulTest: " + ran + " problems on oneDNN, " + declined + " declined (strided vectors) and left to the fallback");
        assertTrue(ran > 200, ran + " of 300 ran on oneDNN");
    }

    /** The same problems from four threads at once (contexts are per call), half of them holding gemms single-threaded. */
    @Test
    void concurrentCallersGetTheirOwnResults() throws Exception {
        System.out.println("OnednnMatmulTest concurrent seed " + seed + " (-Ddistill4j.test.seed replays it)");
        ExecutorService pool = Executors.newFixedThreadPool(4);
        try {
            List<Future<Integer>> results = new ArrayList<>();
            for (int t = 0; t < 4; t++) {
                long threadSeed = seed + t;
                boolean hold = t % 2 == 0;
                results.add(pool.submit(() -> {
                    Random r = new Random(threadSeed);
                    int ran = 0;
                    if (hold) CpuBlas.holdSingleThreaded();
                    try {
                        for (int i = 0; i < 60; i++) if (Problem.random(r, 48).runAndCheck("thread seed " + threadSeed + " problem " + i)) ran++;
                    } finally {
                        if (hold) CpuBlas.releaseSingleThreaded();
                    }
                    return ran;
                }));
            }
            for (Future<Integer> f : results) assertTrue(f.get() > 0);
        } finally {
            pool.shutdown();
        }
    }

    @Test
    void aShapeIsCreatedOnceAndCached() {
        try (Arena arena = Arena.ofConfined()) {
            int m = 37, n = 41, k = 43;
            MemorySegment a = arena.allocate(JAVA_FLOAT, (long) m * k), b = arena.allocate(JAVA_FLOAT, (long) k * n), c = arena.allocate(JAVA_FLOAT, (long) m * n);
            assertTrue(OnednnMatmul.sgemm(false, true, m, n, k, 1f, a, k, 0, b, k, 0, 0f, c, n, 0, 1));
            int cached = OnednnMatmul.implementations().size();
            for (int i = 0; i < 5; i++) assertTrue(OnednnMatmul.sgemm(false, true, m, n, k, 1f, a, k, 0, b, k, 0, 0f, c, n, 0, 1));
            assertEquals(cached, OnednnMatmul.implementations().size(), "the same problem created another primitive");
            String mine = OnednnMatmul.implementations().stream().filter(s -> s.contains("m=37, n=41, k=43")).findFirst().orElseThrow();
            System.out.println("OnednnMatmulTest: " + mine);
        }
    }

    @Test
    void engineNamesParseAndUnknownOnesSayWhatIsExpected() {
        assertEquals(CpuEngine.ONEDNN, CpuEngine.parse("oneDNN"));
        assertEquals(CpuEngine.OPENBLAS, CpuEngine.parse("openblas"));
        assertEquals(CpuEngine.JAVA, CpuEngine.parse(" java "));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> CpuEngine.parse("mkl"));
        assertEquals("distill4j.cpu.engine: unknown CPU engine 'mkl', expected onednn, openblas or java", e.getMessage());
        System.out.println("OnednnMatmulTest: gemm on " + CpuBlas.provider());
    }

    static float[] gaussian(Random r, long n) {
        float[] x = new float[(int) n];
        for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
        return x;
    }
}
