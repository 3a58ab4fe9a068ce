package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * sgemm on every engine present (the selected one through CpuBlas.sgemm, with its fallback for
 * shapes oneDNN declines; OpenBLAS and the Java gemm directly) against a float64 reference.
 */
class CpuBlasTest {
    static Stream<Arguments> shapes() {
        int[][] mnk = {{1, 1, 1}, {1, 7, 3}, {5, 1, 9}, {7, 13, 5}, {31, 33, 17}, {64, 128, 96}, {127, 61, 257}};
        Stream.Builder<Arguments> b = Stream.builder();
        for (int[] s : mnk) for (boolean ta : new boolean[] {false, true}) for (boolean tb : new boolean[] {false, true}) {
            b.add(Arguments.of(s[0], s[1], s[2], ta, tb));
        }
        return b.build();
    }

    @ParameterizedTest(name = "m={0} n={1} k={2} transA={3} transB={4}")
    @MethodSource("shapes")
    void sgemmMatchesFloat64(int m, int n, int k, boolean ta, boolean tb) {
        check(m, n, k, ta, tb, null);
        check(m, n, k, ta, tb, CpuEngine.JAVA);
        if (CpuEngine.OPENBLAS.available()) check(m, n, k, ta, tb, CpuEngine.OPENBLAS);
        // oneDNN directly, also below the size at which CpuBlas.sgemm would send it there; it declines
        // strided vectors (n = 1, or one row of a transposed A with lda > 1), which the other engines run.
        if (CpuEngine.ONEDNN.available() && n > 1 && (m > 1 || !ta)) check(m, n, k, ta, tb, CpuEngine.ONEDNN);
    }

    /** engine null: CpuBlas.sgemm, i.e. the selected engine. */
    private static void check(int m, int n, int k, boolean ta, boolean tb, CpuEngine engine) {
        Random r = new Random(m * 31L + n * 17L + k + (ta ? 1000 : 0) + (tb ? 2000 : 0));
        float alpha = 0.75f, beta = -0.5f;
        // Stored shapes: A is [m,k] or, transposed, [k,m]; leading dimension padded by 3 to test ld handling.
        int aRows = ta ? k : m, aCols = ta ? m : k, lda = aCols + 3;
        int bRows = tb ? n : k, bCols = tb ? k : n, ldb = bCols + 3;
        int ldc = n + 3;
        try (Arena arena = Arena.ofConfined()) {
            float[] a = random(r, aRows * lda), b = random(r, bRows * ldb), c = random(r, m * ldc);
            MemorySegment as = arena.allocateFrom(JAVA_FLOAT, a), bs = arena.allocateFrom(JAVA_FLOAT, b), cs = arena.allocateFrom(JAVA_FLOAT, c);
            if (engine != null) CpuBlas.sgemmOn(engine, ta, tb, m, n, k, alpha, as, lda, bs, ldb, beta, cs, ldc);
            else CpuBlas.sgemm(ta, tb, m, n, k, alpha, as, lda, bs, ldb, beta, cs, ldc);
            String name = engine != null ? engine.key() : CpuBlas.engine().key() + " (selected)";
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < n; j++) {
                    double sum = 0, mag = 0;
                    for (int p = 0; p < k; p++) {
                        double av = ta ? a[p * lda + i] : a[i * lda + p];
                        double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
                        sum += av * bv;
                        mag += Math.abs(av * bv);
                    }
                    double expected = alpha * sum + beta * c[i * ldc + j];
                    double scale = Math.abs(alpha) * mag + Math.abs(beta * c[i * ldc + j]);
                    double got = cs.getAtIndex(JAVA_FLOAT, (long) i * ldc + j);
                    assertTrue(Math.abs(got - expected) <= 1e-5 * Math.max(scale, 1e-30) + 1e-30,
                        name + " C[" + i + "," + j + "] = " + got + ", expected " + expected);
                }
            }
            // Padding columns of C are untouched.
            for (int i = 0; i < m; i++) for (int j = n; j < ldc; j++) {
                assertTrue(cs.getAtIndex(JAVA_FLOAT, (long) i * ldc + j) == c[i * ldc + j], "sgemm wrote outside C");
            }
        }
    }

    @org.junit.jupiter.api.Test
    void tooSmallBuffersAreRejectedBeforeTheNativeCall() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment small = arena.allocate(JAVA_FLOAT, 3);
            MemorySegment ok = arena.allocate(JAVA_FLOAT, 4);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> CpuBlas.sgemm(false, false, 2, 2, 2, 1f, small, 2, ok, 2, 0f, ok, 2));
            assertTrue(e.getMessage().contains("A holds 12 bytes, needs 16"), e.getMessage());
        }
    }

    private static float[] random(Random r, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        return x;
    }
}
