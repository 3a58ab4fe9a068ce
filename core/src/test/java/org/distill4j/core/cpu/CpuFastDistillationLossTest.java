package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.util.Random;
import java.util.concurrent.ForkJoinPool;
import org.distill4j.bindings.cpu.distill4j_cpu_h;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.DistillationLossTest;
import org.distill4j.core.loss.Divergence;
import org.distill4j.kernels.KernelImage;
import org.junit.jupiter.api.Test;

/**
 * The float fast path (our C kernel, native/src/main/c) against the double oracle it falls back to,
 * through the CPU backend's two entry points: every row length around the 16-lane vectors, fp32 and
 * bf16, every divergence, labels with ignored rows or none, gradients apart, in place or not at all,
 * top-k teachers' -inf, non-finite rows (handed back to the oracle), and thread-count independence.
 */
class CpuFastDistillationLossTest {
    private final CpuBackend cpu = CpuBackend.get();
    /** Fresh inputs every run; the seed is in every failure message, and -Ddistill4j.test.seed=N replays one. */
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);

    CpuFastDistillationLossTest() {
        System.out.println("CpuFastDistillationLossTest random seed " + seed + " (-Ddistill4j.test.seed=" + seed + " replays it)");
    }

    @Test
    void theKernelLibraryIsThereWhenTheBuildMadeIt() {
        if (KernelImage.cpuLibraryBuilt()) {
            assertTrue(CpuFastDistillationLoss.available(), CpuFastDistillationLoss.unavailableReason());
            assertTrue(java.util.List.of("avx512", "avx2", "sse2").contains(CpuFastDistillationLoss.isa()), CpuFastDistillationLoss.isa());
            assertTrue(CpuBackend.fastLossPath().startsWith("float fast path ("), CpuBackend.fastLossPath());
        } else {
            assertFalse(KernelImage.cpuLibraryNotBuiltReason().isBlank());
            assertTrue(CpuBackend.fastLossPath().startsWith("double oracle only: "), CpuBackend.fastLossPath());
        }
    }

    /** One evaluation's loss[3] and gradient on either path. */
    private record Result(float[] loss, float[] grad) {}

    private Result run(boolean reference, DType type, float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, long normalizer,
                       String gradMode) {
        try (Tensor ts = tensor(type, s, rows, cols); Tensor tt = tensor(type, t, rows, cols);
             Tensor ty = y == null ? null : cpu.empty(DType.I64, rows).copyFrom(y); Tensor loss = cpu.empty(DType.F32, 3);
             Tensor grad = gradMode.equals("apart") ? cpu.empty(type, rows, cols) : null) {
            Tensor g = switch (gradMode) {
                case "apart" -> grad;
                case "in place" -> ts;
                default -> null;
            };
            if (reference) cpu.referenceDistillationLoss(ts, tt, ty, cfg, normalizer, loss, g);
            else cpu.distillationLoss(ts, tt, ty, cfg, normalizer, loss, g);
            return new Result(loss.toFloatArray(), g == null ? null : floats(g));
        }
    }

    private Tensor tensor(DType type, float[] v, int rows, int cols) {
        if (type == DType.F32) return cpu.fromArray(v, rows, cols);
        short[] bits = new short[v.length];
        for (int i = 0; i < v.length; i++) bits[i] = Bf16.fromFloat(v[i]);
        Tensor x = cpu.empty(DType.BF16, rows, cols);
        cpu.copyFromHost(MemorySegment.ofArray(bits), x);
        return x;
    }

    private float[] floats(Tensor x) {
        if (x.dtype() == DType.F32) return x.toFloatArray();
        short[] bits = new short[(int) x.numel()];
        cpu.copyToHost(x, MemorySegment.ofArray(bits));
        float[] out = new float[bits.length];
        for (int i = 0; i < bits.length; i++) out[i] = Bf16.toFloat(bits[i]);
        return out;
    }

    @Test
    void matchesTheOracleAcrossRowLengthsTypesAndLabels() {
        matchTheOracle("");
    }

    /** Each copy of the kernel this CPU runs (AVX-512: 16 lanes, AVX2: 8, SSE2: 4) against the oracle. */
    @Test
    void everyCopyOfTheKernelThisCpuRunsMatchesTheOracle() {
        org.junit.jupiter.api.Assumptions.assumeTrue(CpuFastDistillationLoss.available(), CpuFastDistillationLoss.unavailableReason());
        java.util.List<String> order = java.util.List.of("sse2", "avx2", "avx512");
        String best = CpuFastDistillationLoss.bestIsa();
        try {
            for (String isa : order.subList(0, order.indexOf(best) + 1)) {
                CpuFastDistillationLoss.useIsa(isa);
                assertEquals(isa, CpuFastDistillationLoss.isa());
                matchTheOracle(" [" + isa + "]");
            }
            IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> CpuFastDistillationLoss.useIsa("avx1024"));
            assertTrue(e.getMessage().contains("distill4j.cpu.isa = 'avx1024'") && e.getMessage().contains(best), e.getMessage());
        } finally {
            CpuFastDistillationLoss.useIsa("");
        }
        assertEquals(best, CpuFastDistillationLoss.isa());
    }

    private void matchTheOracle(String copy) {
        int[] lengths = {1, 2, 15, 16, 17, 31, 33, 1000, 1024, 4099};
        for (int cols : lengths) for (Divergence div : Divergence.values()) for (DType type : new DType[] {DType.F32, DType.BF16}) {
            int rows = 1 + random.nextInt(9);
            float T = new float[] {0.1f, 1f, 3f, 4f, 7f, 100f}[random.nextInt(6)];
            boolean labels = random.nextBoolean();
            float alpha = labels ? new float[] {0f, 0.5f, 0.9f, 1f}[random.nextInt(4)] : 1f;
            double scale = new double[] {1, 5, 1e4}[random.nextInt(3)];
            float[] s = gaussian(rows * cols, scale), t = gaussian(rows * cols, scale);
            long[] y = null;
            if (labels) {
                y = new long[rows];
                for (int r = 0; r < rows; r++) y[r] = r % 3 == 1 ? -100 : random.nextInt(cols);
            }
            if (type == DType.BF16) {
                for (int i = 0; i < s.length; i++) {
                    s[i] = Bf16.toFloat(Bf16.fromFloat(s[i]));
                    t[i] = Bf16.toFloat(Bf16.fromFloat(t[i]));
                }
            }
            float beta = new float[] {0.5f, 0.1f, 0.9f, 0.01f + 0.98f * random.nextFloat()}[random.nextInt(4)];
            DistillationLoss cfg = new DistillationLoss(div, T, alpha, beta, -100);
            long normalizer = random.nextBoolean() ? 0 : rows + 3;
            String what = div + " " + type + " " + rows + "x" + cols + " T=" + T + " alpha=" + alpha + " beta=" + beta + " scale=" + scale + (labels ? " labels" : "")
                + " N=" + normalizer + " (seed " + seed + ")" + copy;
            Result expected = run(true, type, s, t, y, rows, cols, cfg, normalizer, "apart");
            for (String gradMode : new String[] {"apart", "in place", "none"}) {
                Result got = run(false, type, s, t, y, rows, cols, cfg, normalizer, gradMode);
                for (int i = 0; i < 3; i++) {
                    assertEquals(expected.loss()[i], got.loss()[i], lossTolerance(expected.loss()[0], cfg), what + " loss[" + i + "], grad " + gradMode);
                }
                long counted = y == null ? rows : java.util.Arrays.stream(y).filter(v -> v != -100).count();
                double n = normalizer > 0 ? normalizer : Math.max(1, counted);
                if (got.grad() != null) assertGradientsClose(expected.grad(), got.grad(), type, DistillationLossTest.gradientFloor(alpha, T, labels, n), what + ", grad " + gradMode);
            }
        }
    }

    /** The fast path's loss bound: DistillationLossTest's (1e-5 relative plus the exponentials' rounding floor, 6 ulp(1) of D times alpha T^2). */
    private static double lossTolerance(double expected, DistillationLoss cfg) {
        return DistillationLossTest.tolerance(expected, 1e-3, cfg, false);
    }

    /** 1e-5 of the row set's largest gradient (fp32); bf16 gradients are rounded from fp32 ones, so one bf16 ulp (up to 2^-7 relative) more. */
    private static void assertGradientsClose(float[] expected, float[] got, DType type, double floor, String what) {
        double max = 1e-30;
        for (float v : expected) max = Math.max(max, Math.abs(v));
        for (int i = 0; i < expected.length; i++) {
            double tol = 1e-5 * max + floor + (type == DType.BF16 ? 0x1p-7 * Math.abs(expected[i]) : 0);
            assertEquals(expected[i], got[i], tol, what + " element " + i);
        }
    }

    /**
     * The cross-entropy's exp(s - max) comes from the softened exponentials by binary powering at
     * every integer T from 1 to 8 (an exponential of its own otherwise): each of those T, and 2.5
     * and 9 either side, against the oracle, with logits spread wide enough that terms underflow.
     */
    @Test
    void theCrossEntropyTermAtEveryIntegerTemperature() {
        int rows = 6, cols = 1000;
        for (float T : new float[] {1, 2, 3, 4, 5, 6, 7, 8, 2.5f, 9}) for (Divergence div : new Divergence[] {Divergence.KL, Divergence.JSD}) {
            for (double scale : new double[] {3, 300}) {
                float[] s = gaussian(rows * cols, scale), t = gaussian(rows * cols, scale);
                long[] y = new long[rows];
                for (int r = 0; r < rows; r++) y[r] = r == 4 ? -100 : random.nextInt(cols);
                DistillationLoss cfg = new DistillationLoss(div, T, 0.5f, 0.5f, -100);
                String what = div + " T=" + T + " scale=" + scale + " (seed " + seed + ")";
                Result expected = run(true, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
                Result got = run(false, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
                for (int i = 0; i < 3; i++) assertEquals(expected.loss()[i], got.loss()[i], lossTolerance(expected.loss()[0], cfg), what + " loss[" + i + "]");
                assertGradientsClose(expected.grad(), got.grad(), DType.F32, DistillationLossTest.gradientFloor(0.5f, T, true, rows - 1), what);
            }
        }
    }

    /**
     * Reverse KL and JSD at T = 0.1 with logits of +-1e4: log p - log q reaches 1e5 and the
     * gradient p (g - sum p g) cancels most of it, which is why the kernel forms r and g in double
     * (an fp32 r was 4e-3 of the largest gradient off on CUDA, fourth session).
     */
    @Test
    void reverseKlAndJsdAtTheExtremes() {
        for (Divergence div : new Divergence[] {Divergence.REVERSE_KL, Divergence.JSD}) for (int rep = 0; rep < 10; rep++) {
            int rows = 6, cols = 1 + random.nextInt(3000);
            // The student's top three classes near-tied, 5 above the rest (p spread over them, 0 elsewhere:
            // e^-50 at T = 0.1); the teacher's logits at
            // those classes 2e4 below its own maximum and within ~1 of each other: r = log p - log q
            // is ~2e5 there, and the gradient p (r - sum p r) keeps only their differences, ~10. An
            // fp32 t - max t is 1e-3 off at 2e4 (r: 1e-2), which the double r does not lose (measured
            // with an fp32 r: 6e-4 of the largest gradient off; with the double r: 7e-8).
            float[] s = gaussian(rows * cols, 1e4), t = gaussian(rows * cols, 1e4);
            for (int r = 0; r < rows; r++) {
                float sMax = Float.NEGATIVE_INFINITY, tMax = Float.NEGATIVE_INFINITY;
                for (int c = 0; c < cols; c++) {
                    sMax = Math.max(sMax, s[r * cols + c]);
                    tMax = Math.max(tMax, t[r * cols + c]);
                }
                for (int j = 0; j < 3; j++) {
                    int c = random.nextInt(cols);
                    s[r * cols + c] = sMax + 5 + (float) (0.1 * random.nextGaussian());
                    t[r * cols + c] = tMax - 2e4f + (float) random.nextGaussian();
                }
            }
            long[] y = new long[rows];
            for (int r = 0; r < rows; r++) y[r] = random.nextInt(cols);
            DistillationLoss cfg = new DistillationLoss(div, 0.1f, 0.8f, 0.3f, -100);
            String what = div + " T=0.1 beta=0.3 logits 1e4, " + rows + "x" + cols + " (seed " + seed + ")";
            Result expected = run(true, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
            Result got = run(false, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
            for (int i = 0; i < 3; i++) assertEquals(expected.loss()[i], got.loss()[i], lossTolerance(expected.loss()[0], cfg), what + " loss[" + i + "]");
            assertGradientsClose(expected.grad(), got.grad(), DType.F32, 0, what);
        }
    }

    @Test
    void topKTeachersMinusInfinityIsNoMass() {
        int rows = 5, cols = 100, k = 7;
        float[] s = gaussian(rows * cols, 3), t = gaussian(rows * cols, 3);
        for (int r = 0; r < rows; r++) for (int c = k; c < cols; c++) t[r * cols + c] = Float.NEGATIVE_INFINITY;
        long[] y = {3, 50, -100, 0, 99};
        for (Divergence div : new Divergence[] {Divergence.KL, Divergence.JSD}) {
            DistillationLoss cfg = new DistillationLoss(div, 2f, 0.7f, 0.5f, -100);
            Result expected = run(true, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
            Result got = run(false, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
            assertTrue(Float.isFinite(got.loss()[0]), div + ": finite loss with a top-k teacher: " + got.loss()[0]);
            for (int i = 0; i < 3; i++) assertEquals(expected.loss()[i], got.loss()[i], lossTolerance(expected.loss()[0], cfg), div + " loss[" + i + "]");
            assertGradientsClose(expected.grad(), got.grad(), DType.F32, 0, div + " top-k gradient");
        }
    }

    /**
     * Reverse KL and MSE refuse a -inf teacher logit before writing anything, naming its element:
     * the fast path finds it in C (one vectorised pass), the oracle in Java; the same element,
     * fp32 and bf16, in the first 4,096-element block or a later one.
     */
    @Test
    void aMinusInfinityTeacherIsRefusedAtTheSameElementOnBothPaths() {
        int rows = 7, cols = 1500;
        for (DType type : new DType[] {DType.F32, DType.BF16}) for (int at : new int[] {0, 4095, 4096, 7 * 1500 - 1, random.nextInt(7 * 1500)}) {
            float[] s = gaussian(rows * cols, 2), t = gaussian(rows * cols, 2);
            t[at] = Float.NEGATIVE_INFINITY;
            if (at > 0) t[at - 1] = Float.POSITIVE_INFINITY;  // not -inf: must not be reported
            for (Divergence div : new Divergence[] {Divergence.REVERSE_KL, Divergence.MSE}) {
                DistillationLoss cfg = new DistillationLoss(div, 2f, 1f, 0.5f, -100);
                for (boolean reference : new boolean[] {true, false}) {
                    IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                        () -> run(reference, type, s, t, null, rows, cols, cfg, 0, "in place"));
                    assertTrue(e.getMessage().contains("element " + at + " is -inf"), type + " " + div + (reference ? " (oracle)" : " (fast path)") + ": " + e.getMessage());
                }
            }
        }
    }

    /**
     * The -inf check past one chunk (it scans chunks of 2^20 logits in parallel): the first -inf of
     * the whole teacher wins whichever chunk finishes first, at chunk boundaries, in the last
     * element, with none at all, fp32 and bf16, +inf never reported.
     */
    @Test
    void theParallelMinusInfinityCheckNamesTheFirstOne() {
        org.junit.jupiter.api.Assumptions.assumeTrue(CpuFastDistillationLoss.available(), CpuFastDistillationLoss.unavailableReason());
        long chunk = CpuFastDistillationLoss.CHECK_CHUNK, n = 3 * chunk + 12345;
        for (DType type : new DType[] {DType.F32, DType.BF16}) {
            boolean bf16 = type == DType.BF16;
            long bytes = bf16 ? 2 : 4;
            // shared: the chunks are scanned on the pool's threads (tensors' memory is shared too)
            try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofShared()) {
                MemorySegment x = arena.allocate(n * bytes, 64);  // zeros
                java.util.function.BiConsumer<Long, Float> put = (i, v) -> {
                    if (bf16) x.set(java.lang.foreign.ValueLayout.JAVA_SHORT, i * 2, Bf16.fromFloat(v));
                    else x.set(java.lang.foreign.ValueLayout.JAVA_FLOAT, i * 4, v);
                };
                assertEquals(-1, CpuFastDistillationLoss.firstNegativeInfinity(x, n, bf16), type + ": none");
                put.accept(5L, Float.POSITIVE_INFINITY);
                put.accept(n - 1, Float.NEGATIVE_INFINITY);
                assertEquals(n - 1, CpuFastDistillationLoss.firstNegativeInfinity(x, n, bf16), type + ": the last element");
                long[] firsts = {3 * chunk, 2 * chunk + random.nextInt((int) chunk), chunk, chunk - 1, random.nextInt((int) chunk)};
                for (long at : firsts) {  // each earlier than the ones before it, which stay
                    put.accept(at, Float.NEGATIVE_INFINITY);
                    assertEquals(at, CpuFastDistillationLoss.firstNegativeInfinity(x, n, bf16), type + ": -inf at " + at + " (seed " + seed + ")");
                    assertEquals(at, distill4j_cpu_h.d4j_cpu_find_neg_inf(x, CpuFastDistillationLoss.dtype(bf16), n),
                        type + ": the serial scan agrees");
                }
            }
        }
    }

    /**
     * A NaN or infinite logit: the kernel hands the row back and the oracle computes it, so the
     * loss is NaN or infinite as the oracle's (and PyTorch's) and that row's gradient the oracle's, bit for bit; every other
     * row's gradient is unchanged.
     */
    @Test
    void nonFiniteRowsGetTheOraclesAnswer() {
        int rows = 4, cols = 37;
        float[][] poison = {{Float.NaN, 0}, {Float.POSITIVE_INFINITY, 0}, {Float.NEGATIVE_INFINITY, 0}, {0, Float.NaN}, {0, Float.POSITIVE_INFINITY}};
        for (float[] p : poison) {
            float[] s = gaussian(rows * cols, 2), t = gaussian(rows * cols, 2);
            s[2 * cols + 5] += p[0];
            t[2 * cols + 5] += p[1];
            long[] y = {1, 2, 3, 4};
            DistillationLoss cfg = DistillationLoss.hinton(3f, 0.5f);
            Result expected = run(true, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
            Result got = run(false, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
            String what = "student " + p[0] + ", teacher " + p[1] + " at row 2";
            assertFalse(Float.isFinite(expected.loss()[0]), what + ": the oracle's loss is NaN or infinite, got " + expected.loss()[0]);
            assertEquals(expected.loss()[0], got.loss()[0], what + ": the same NaN or infinity");
            for (int i = 0; i < rows * cols; i++) {
                float e = expected.grad()[i], g = got.grad()[i];
                if (i / cols == 2) assertEquals(Float.floatToIntBits(e), Float.floatToIntBits(g), what + ": the oracle's own row, element " + i);
                else assertEquals(e, g, 1e-6, what + ": element " + i);
            }
        }
    }

    @Test
    void everyRowIgnoredIsNaNWithAZeroGradient() {
        int rows = 3, cols = 40;
        Result got = run(false, DType.F32, gaussian(rows * cols, 1), gaussian(rows * cols, 1), new long[] {-100, -100, -100}, rows, cols,
            DistillationLoss.hinton(4f, 0.9f), 0, "apart");
        assertTrue(Float.isNaN(got.loss()[0]), "mean over no rows: " + got.loss()[0]);
        for (float g : got.grad()) assertEquals(0f, g);
    }

    /** Rows are cut into blocks by the shape alone and summed in block order: one thread or all, the same bits. */
    @Test
    void theThreadCountChangesNoBit() throws Exception {
        int rows = 300, cols = 777;
        float[] s = gaussian(rows * cols, 4), t = gaussian(rows * cols, 4);
        long[] y = new long[rows];
        for (int r = 0; r < rows; r++) y[r] = random.nextInt(cols);
        DistillationLoss cfg = DistillationLoss.hinton(4f, 0.9f);
        Result all = run(false, DType.F32, s, t, y, rows, cols, cfg, 0, "apart");
        ForkJoinPool one = new ForkJoinPool(1);
        try {
            Result single = one.submit(() -> run(false, DType.F32, s, t, y, rows, cols, cfg, 0, "apart")).get();
            assertArrayEquals(all.loss(), single.loss());
            assertArrayEquals(all.grad(), single.grad());
        } finally {
            one.shutdown();
        }
    }

    private float[] gaussian(int n, double scale) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (random.nextGaussian() * scale);
        return x;
    }
}
