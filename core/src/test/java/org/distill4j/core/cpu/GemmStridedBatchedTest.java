package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.distill4j.core.Backend;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.junit.jupiter.api.Test;

/**
 * Backend.gemmStridedBatched on the CPU against a naive double-precision reference written from
 * the definition: every transpose pair, padded leading dimensions, offsets, broadcast (stride 0)
 * operands, attention's per-head layout, BF16 operands, and the argument checks.
 */
class GemmStridedBatchedTest {
    private final Backend cpu = CpuBackend.get();

    /** One problem: sizes, layouts and the operands' contents. */
    record Problem(boolean transA, boolean transB, int m, int n, int k, float alpha, float beta, long offA, int lda, long strideA, long offB, int ldb,
                   long strideB, long offC, int ldc, long strideC, int batch, float[] a, float[] b, float[] c) {
        /** C after the op, in double: C_i[r, j] = alpha sum_p A_i(r, p) B_i(p, j) + beta C_i[r, j]. */
        double[] reference() {
            double[] out = new double[c.length];
            for (int i = 0; i < c.length; i++) out[i] = c[i];
            for (int i = 0; i < batch; i++) {
                for (int r = 0; r < m; r++) {
                    for (int j = 0; j < n; j++) {
                        double s = 0;
                        for (int p = 0; p < k; p++) {
                            double av = a[(int) (offA + i * strideA + (transA ? (long) p * lda + r : (long) r * lda + p))];
                            double bv = b[(int) (offB + i * strideB + (transB ? (long) j * ldb + p : (long) p * ldb + j))];
                            s += av * bv;
                        }
                        int at = (int) (offC + i * strideC + (long) r * ldc + j);
                        out[at] = alpha * s + beta * c[at];
                    }
                }
            }
            return out;
        }
    }

    /** A random problem; {@code broadcastA/B}: stride 0 for that operand. Padded leading dimensions and offsets throughout. */
    static Problem random(Random r, boolean transA, boolean transB, boolean broadcastA, boolean broadcastB) {
        int m = 1 + r.nextInt(9), n = 1 + r.nextInt(9), k = 1 + r.nextInt(9), batch = 1 + r.nextInt(4);
        int lda = (transA ? m : k) + r.nextInt(3), ldb = (transB ? k : n) + r.nextInt(3), ldc = n + r.nextInt(3);
        long aMatrix = (long) (transA ? k : m) * lda, bMatrix = (long) (transB ? n : k) * ldb, cMatrix = (long) m * ldc;
        long strideA = broadcastA ? 0 : aMatrix + r.nextInt(4), strideB = broadcastB ? 0 : bMatrix + r.nextInt(4), strideC = cMatrix + r.nextInt(4);
        long offA = r.nextInt(5), offB = r.nextInt(5), offC = r.nextInt(5);
        float[] a = gaussian(r, (int) (offA + (batch - 1) * strideA + aMatrix + r.nextInt(3)));
        float[] b = gaussian(r, (int) (offB + (batch - 1) * strideB + bMatrix + r.nextInt(3)));
        float[] c = gaussian(r, (int) (offC + (batch - 1) * strideC + cMatrix + r.nextInt(3)));
        float alpha = (float) (0.5 + r.nextDouble()), beta = r.nextBoolean() ? 0f : (float) r.nextDouble();
        return new Problem(transA, transB, m, n, k, alpha, beta, offA, lda, strideA, offB, ldb, strideB, offC, ldc, strideC, batch, a, b, c);
    }

    static float[] gaussian(Random r, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        return x;
    }

    /** Runs {@code p} on {@code backend} with A and B of {@code dtype} and returns C. */
    static float[] run(Backend backend, Problem p, DType dtype) {
        try (Tensor a = backend.empty(dtype, p.a().length).copyFrom(p.a()); Tensor b = backend.empty(dtype, p.b().length).copyFrom(p.b());
             Tensor c = backend.fromArray(p.c(), p.c().length)) {
            backend.gemmStridedBatched(p.transA(), p.transB(), p.m(), p.n(), p.k(), p.alpha(), a, p.offA(), p.lda(), p.strideA(), b, p.offB(), p.ldb(),
                p.strideB(), p.beta(), c, p.offC(), p.ldc(), p.strideC(), p.batch());
            return c.toFloatArray();
        }
    }

    static long seed() {
        long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
        System.out.println("gemmStridedBatched seed " + seed + " (replay: -Ddistill4j.test.seed=" + seed + ")");
        return seed;
    }

    @Test
    void matchesTheNaiveReferenceForEveryLayout() {
        Random r = new Random(seed());
        for (int trial = 0; trial < 200; trial++) {
            Problem p = random(r, r.nextBoolean(), r.nextBoolean(), trial % 4 == 1, trial % 4 == 2);
            double[] expected = p.reference();
            float[] got = run(cpu, p, DType.F32);
            for (int i = 0; i < got.length; i++) {
                assertEquals(expected[i], got[i], 1e-5 * Math.max(1, Math.abs(expected[i])) * (p.k() + 1), "trial " + trial + " " + p + " C[" + i + "]");
            }
        }
    }

    /** Attention's scores: S[b, h] = Q[b, :, h, :] K[b, :, h, :]^T straight from [B, T, H, D] activations, as one call per batch row (H heads). */
    @Test
    void attentionScoresFromInterleavedHeads() {
        Random r = new Random(seed());
        int batchRows = 2, t = 5, heads = 3, d = 4;
        float[] q = gaussian(r, batchRows * t * heads * d), kk = gaussian(r, batchRows * t * heads * d);
        try (Tensor tq = cpu.fromArray(q, batchRows, t, heads, d); Tensor tk = cpu.fromArray(kk, batchRows, t, heads, d);
             Tensor s = cpu.zeros(DType.F32, batchRows, heads, t, t)) {
            for (int b = 0; b < batchRows; b++) {
                long base = (long) b * t * heads * d;
                // head h of row b: Q_h starts at base + h * d, its rows (time steps) heads * d apart; heads are d apart.
                cpu.gemmStridedBatched(false, true, t, t, d, 0.5f, tq, base, heads * d, d, tk, base, heads * d, d, 0f, s, (long) b * heads * t * t, t,
                    (long) t * t, heads);
            }
            float[] got = s.toFloatArray();
            for (int b = 0; b < batchRows; b++) for (int h = 0; h < heads; h++) for (int i = 0; i < t; i++) for (int j = 0; j < t; j++) {
                double sum = 0;
                for (int x = 0; x < d; x++) sum += (double) q[((b * t + i) * heads + h) * d + x] * kk[((b * t + j) * heads + h) * d + x];
                assertEquals(0.5 * sum, got[((b * heads + h) * t + i) * t + j], 1e-5, "S[" + b + ", " + h + ", " + i + ", " + j + "]");
            }
        }
    }

    /** BF16 operands: each element widened exactly, products summed in float; the reference rounds the inputs to bf16 first. */
    @Test
    void bf16OperandsAccumulateInFloat() {
        Random r = new Random(seed());
        for (int trial = 0; trial < 50; trial++) {
            Problem p = random(r, r.nextBoolean(), r.nextBoolean(), trial % 3 == 1, trial % 3 == 2);
            Problem rounded = new Problem(p.transA(), p.transB(), p.m(), p.n(), p.k(), p.alpha(), p.beta(), p.offA(), p.lda(), p.strideA(), p.offB(), p.ldb(),
                p.strideB(), p.offC(), p.ldc(), p.strideC(), p.batch(), bf16(p.a()), bf16(p.b()), p.c());
            double[] expected = rounded.reference();
            float[] got = run(cpu, p, DType.BF16);
            for (int i = 0; i < got.length; i++) assertEquals(expected[i], got[i], 1e-5 * Math.max(1, Math.abs(expected[i])) * (p.k() + 1), "trial " + trial);
        }
    }

    static float[] bf16(float[] x) {
        float[] out = new float[x.length];
        for (int i = 0; i < x.length; i++) out[i] = Bf16.toFloat(Bf16.fromFloat(x[i]));
        return out;
    }

    @Test
    void badArgumentsAreNamed() {
        try (Tensor a = cpu.zeros(DType.F32, 12); Tensor b = cpu.zeros(DType.F32, 12); Tensor c = cpu.zeros(DType.F32, 8);
             Tensor h = cpu.zeros(DType.BF16, 12)) {
            // 2 batches of [2, 3] x [3, 2] -> [2, 2]: A ends at 6 + 3 + 3 = 12, B at 6 + 4 + 2 = 12, C at 4 + 2 + 2 = 8, all exact fits.
            cpu.gemmStridedBatched(false, false, 2, 2, 3, 1f, a, 0, 3, 6, b, 0, 2, 6, 0f, c, 0, 2, 4, 2);
            expectError("gemmStridedBatched: B needs elements up to 13", () -> cpu.gemmStridedBatched(false, false, 2, 2, 3, 1f, a, 0, 3, 6, b, 0, 2, 7, 0f, c, 0, 2, 4, 2));
            expectError("gemmStridedBatched: leading dimension of A is 2, needs >= 3",
                () -> cpu.gemmStridedBatched(false, false, 2, 2, 3, 1f, a, 0, 2, 6, b, 0, 2, 6, 0f, c, 0, 2, 4, 2));
            expectError("gemmStridedBatched: C has batch stride 0 with 2 matrices",
                () -> cpu.gemmStridedBatched(false, false, 2, 2, 3, 1f, a, 0, 3, 6, b, 0, 2, 6, 0f, c, 0, 2, 0, 2));
            expectError("gemmStridedBatched: A and B must both be F32 or both BF16",
                () -> cpu.gemmStridedBatched(false, false, 2, 2, 3, 1f, a, 0, 3, 6, h, 0, 2, 6, 0f, c, 0, 2, 4, 2));
            expectError("gemmStridedBatched: expected F32", () -> cpu.gemmStridedBatched(false, false, 2, 2, 3, 1f, a, 0, 3, 6, b, 0, 2, 6, 0f, h, 0, 2, 4, 2));
            expectError("gemmStridedBatched: m, n, k must be >= 0 and batch >= 1",
                () -> cpu.gemmStridedBatched(false, false, 2, 2, 3, 1f, a, 0, 3, 6, b, 0, 2, 6, 0f, c, 0, 2, 4, 0));
        }
    }

    /** addBroadcast against the definition: b repeated over a's leading axes, in place and out of place; shapes that do not broadcast are named. */
    @Test
    void addBroadcastRepeatsBOverTheLeadingAxes() {
        Random r = new Random(seed());
        long[][][] cases = {{{2, 3, 4}, {3, 4}}, {{2, 3, 4}, {4}}, {{5, 7}, {5, 7}}, {{3, 1, 2}, {1, 2}}};
        for (long[][] shapes : cases) {
            float[] av = gaussian(r, (int) Tensor.numel(shapes[0])), bv = gaussian(r, (int) Tensor.numel(shapes[1]));
            try (Tensor a = cpu.fromArray(av, shapes[0]); Tensor b = cpu.fromArray(bv, shapes[1]); Tensor out = cpu.empty(DType.F32, shapes[0])) {
                cpu.addBroadcast(a, b, out);
                float[] got = out.toFloatArray();
                for (int i = 0; i < av.length; i++) assertEquals(av[i] + bv[i % bv.length], got[i], 0f, java.util.Arrays.toString(shapes[0]) + " element " + i);
                cpu.addBroadcast(a, b, a); // in place
                assertEquals(java.util.Arrays.toString(got), java.util.Arrays.toString(a.toFloatArray()));
            }
        }
        try (Tensor a = cpu.zeros(DType.F32, 2, 3, 4); Tensor b = cpu.zeros(DType.F32, 2, 4)) {
            expectError("addBroadcast: F32[2, 4] on cpu is not broadcastable over the leading axes of F32[2, 3, 4] on cpu", () -> cpu.addBroadcast(a, b, a));
        }
    }

    private static void expectError(String start, org.junit.jupiter.api.function.Executable call) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
        assertTrue(e.getMessage().startsWith(start), e.getMessage());
    }
}
