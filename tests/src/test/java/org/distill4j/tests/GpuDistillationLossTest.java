package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The CUDA distillation loss against the CPU oracle across the kernel's regimes (warp, block,
 * cluster, re-read, and the explicit double-buffered "pipe" and "split" plans; C from 1 to 256k, with and
 * without 16-byte alignment), every divergence, labels with ignored rows, extreme logits, the
 * normaliser given or counted in the launch. Tag "gpu".
 */
@Tag("gpu")
class GpuDistillationLossTest {
    private static CudaBackend gpu;
    /** Fresh inputs every run; the seed is printed and in every failure message, and -Ddistill4j.test.seed=N replays one. */
    private final long seed = TestSeeds.seed(GpuDistillationLossTest.class);
    private final Random random = new Random(seed);

    @BeforeAll
    static void open() {
        gpu = Gpus.openOrSkip();
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
    }

    /**
     * Every regime the planner picks (warp, block, cluster on sm_90+, reread), fp32 and
     * bf16, every divergence, random T in {0.1, 1, 4, 100} (logits up to +-1e4 at T = 0.1), ignored
     * rows, normalizer given or counted, and more rows than the grid holds (blocks loop).
     */
    @Test
    void cudaMatchesCpuAcrossRegimes() {
        int[][] shapes = {{20000, 1}, {10000, 7}, {300, 33}, {257, 512}, {256, 513}, {2000, 1000}, {64, 6145}, {32, 12288}, {128, 32000},
            {8, 131072}, {4, 262144}};
        java.util.Set<String> regimes = new java.util.TreeSet<>();
        for (DType dtype : new DType[] {DType.F32, DType.BF16}) for (int[] shape : shapes) for (Divergence div : Divergence.values()) {
            int rows = shape[0], cols = shape[1];
            regimes.add(gpu.distillPlan(rows, cols, dtype).regime());
            float t = new float[] {0.1f, 1f, 4f, 100f}[random.nextInt(4)];
            double scale = t == 0.1f ? 1e4 : 5;
            DistillationLoss cfg = new DistillationLoss(div, t, 0.7f, 0.3f, -100);
            float[] s = gaussian(rows * cols, scale), te = gaussian(rows * cols, scale);
            long[] y = new long[rows];
            for (int r = 0; r < rows; r++) y[r] = r % 4 == 3 ? -100 : random.nextInt(cols);
            long normalizer = random.nextBoolean() ? 0 : rows + 5;
            float[][] cpuOut = run(CpuBackend.get(), s, te, y, rows, cols, cfg, dtype, normalizer);
            float[][] gpuOut = run(gpu, s, te, y, rows, cols, cfg, dtype, normalizer);
            String what = "seed " + seed + ": " + dtype + " " + div + " T=" + t + " " + rows + "x" + cols + " normalizer " + normalizer + " ("
                + gpu.distillPlan(rows, cols, dtype) + ")";
            // The soft term is alpha T^2 D, so D's float rounding reaches the loss scaled by
            // alpha T^2: D = sum p (log p - log q) carries the difference of two log-sum-exps of
            // about ln C, hence an absolute error of a few ulps of ln C, even when D is 0 (C = 1)
            // or tiny (T = 100: measured 3.9e-7 at C = 262144, where D was 3.5e-3).
            double floor = 1e-3 * Math.max(1, cfg.alpha() * t * t) * Math.max(1, Math.log(cols));
            for (int i = 0; i < 3; i++) {
                assertEquals(cpuOut[0][i], gpuOut[0][i], 1e-4 * Math.max(floor, Math.abs(cpuOut[0][0])), what + " loss[" + i + "]");
            }
            // bf16 gradients: both sides round an fp32-accurate value to bf16; allow about one bf16 ulp.
            double relative = dtype == DType.BF16 ? 1e-2 : 1e-4;
            assertGradientClose(cpuOut[1], gpuOut[1], relative, what);
        }
        // clusters (pairs) only on sm_90+, for rows up to 32k fp32 columns; longer rows re-read
        assertEquals(plannedRegimes(), regimes, "regimes exercised");
    }

    /**
     * Every launch variant the planner can choose from (staged block or cluster, re-reading block or
     * cluster, with one resident block per SM or as many as fit), not only the default plan, and the
     * double-buffered "pipe" variants of the block and every cluster size: each against the CPU,
     * fp32 and bf16, KL and JSD, with labels and no normalizer (the kernel counts the rows).
     */
    @Test
    void everyRegimeVariantMatchesTheCpu() {
        org.distill4j.bindings.kernels.DistillKernels k = gpu.distillPlans();
        boolean clusters = gpu.context().device().computeMajor() >= 9;
        int checked = 0;
        // 999 columns: rows not 16-byte aligned (no vector copies; "pipe" stages them synchronously)
        for (int[] shape : new int[][] {{40, 1000}, {24, 999}, {16, 32000}, {6, 131072}, {3, 262144}}) {
            int rows = shape[0], cols = shape[1];
            // sparse: a top-k-like teacher, finite in its first 100 columns only, so that every
            // cluster rank but the first stages an all -inf teacher slice
            for (boolean sparse : cols == 32000 ? new boolean[] {false, true} : new boolean[] {false})
            for (DType dtype : new DType[] {DType.F32, DType.BF16}) for (Divergence div : new Divergence[] {Divergence.KL, Divergence.JSD}) {
                float[] s = gaussian(rows * cols, 5), te = gaussian(rows * cols, 5);
                if (sparse) for (int i = 0; i < te.length; i++) if (i % cols >= 100) te[i] = Float.NEGATIVE_INFINITY;
                long[] y = new long[rows];
                for (int r = 0; r < rows; r++) y[r] = r % 3 == 2 ? -100 : random.nextInt(cols);
                DistillationLoss cfg = new DistillationLoss(div, 4f, 0.7f, 0.4f, -100);
                float[][] cpu = run(CpuBackend.get(), s, te, y, rows, cols, cfg, dtype, 0, null);
                int bytes = dtype.bytes();
                java.util.Set<org.distill4j.bindings.kernels.DistillKernels.Plan> seen = new java.util.HashSet<>();
                for (String regime : org.distill4j.bindings.kernels.DistillKernels.REGIMES) {
                    for (int cl : org.distill4j.bindings.kernels.DistillKernels.clusterSizes(regime)) {
                        if (cl > 1 && !clusters) continue;
                        // most staged bytes a block: all the device has, or 64 KiB (longer slices
                        // then re-read their tail: the partially staged path; pipe: 32 KiB a buffer)
                        for (long stage : new long[] {Long.MAX_VALUE, 64 * 1024})
                        for (int perSm : new int[] {1, 0}) {
                            org.distill4j.bindings.kernels.DistillKernels.Plan plan;
                            try {
                                plan = k.explicit(regime, cl, perSm, rows, cols, bytes, stage);
                            } catch (IllegalArgumentException tooBig) {
                                continue; // the slice does not fit this device's shared memory
                            }
                            if (!seen.add(plan)) continue; // the same launch as a variant already checked
                            float[][] got = run(gpu, s, te, y, rows, cols, cfg, dtype, 0, plan);
                            String what = "seed " + seed + ": " + dtype + " " + div + " " + rows + "x" + cols + (sparse ? " sparse teacher " : " ") + plan;
                            assertEquals(cpu[0][0], got[0][0], 1e-4 * Math.max(1e-2, Math.abs(cpu[0][0])), what + " loss");
                            assertGradientClose(cpu[1], got[1], dtype == DType.BF16 ? 1e-2 : 1e-4, what);
                            checked++;
                        }
                    }
                }
            }
        }
        assertTrue(checked >= (clusters ? 100 : 20), "variants checked: " + checked);
    }

    /** 2^20 rows (the upper bound): the warp regime's blocks loop over rows many times. */
    @Test
    void aMillionRows() {
        int rows = 1 << 20;
        for (int cols : new int[] {3, 40}) {
            float[] s = gaussian(rows * cols, 3), te = gaussian(rows * cols, 3);
            long[] y = new long[rows];
            for (int r = 0; r < rows; r++) y[r] = r % 5 == 4 ? -100 : random.nextInt(cols);
            DistillationLoss cfg = DistillationLoss.hinton(4f, 0.5f);
            float[][] cpu = run(CpuBackend.get(), s, te, y, rows, cols, cfg, DType.F32, 0), got = run(gpu, s, te, y, rows, cols, cfg, DType.F32, 0);
            assertEquals(cpu[0][0], got[0][0], 1e-4 * Math.abs(cpu[0][0]), rows + "x" + cols + " loss (" + gpu.distillPlan(rows, cols, DType.F32) + ")");
            assertGradientClose(cpu[1], got[1], 1e-4, rows + "x" + cols);
        }
    }

    /** The same evaluation twice gives the same bits (fixed-order reductions, no float atomics). */
    @Test
    void deterministic() {
        for (int cols : new int[] {10, 1000, 32000}) {
            int rows = 512;
            float[] s = gaussian(rows * cols, 3), te = gaussian(rows * cols, 3);
            long[] y = new long[rows];
            for (int r = 0; r < rows; r++) y[r] = random.nextInt(cols);
            DistillationLoss cfg = DistillationLoss.hinton(4f, 0.5f);
            float[][] a = run(gpu, s, te, y, rows, cols, cfg, DType.F32, 0), b = run(gpu, s, te, y, rows, cols, cfg, DType.F32, 0);
            org.junit.jupiter.api.Assertions.assertArrayEquals(a[0], b[0], "loss, C = " + cols);
            org.junit.jupiter.api.Assertions.assertArrayEquals(a[1], b[1], "gradient, C = " + cols);
        }
    }

    /**
     * Labels without a normalizer: the kernel counts the rows itself (a grid barrier in the same
     * launch), so one evaluation is ONE launch in every regime: captured in a CUDA graph it is a
     * single node, and replaying that graph (the counters reset by the kernel) gives the CPU's
     * result every time and the same bits as passing the count as the normalizer. With every row
     * ignored the loss is NaN and the gradient zero, as on the CPU.
     */
    @Test
    void labelsWithoutANormalizerTakeOneLaunch() {
        int[][] shapes = {{300, 33}, {2000, 1000}, {128, 32000}, {8, 131072}};
        java.util.Set<String> regimes = new java.util.TreeSet<>();
        for (int[] shape : shapes) for (Divergence div : new Divergence[] {Divergence.KL, Divergence.JSD}) {
            int rows = shape[0], cols = shape[1];
            regimes.add(gpu.distillPlan(rows, cols, DType.F32).regime());
            float[] s = gaussian(rows * cols, 4), te = gaussian(rows * cols, 4);
            long[] y = new long[rows];
            long counted = 0;
            for (int r = 0; r < rows; r++) {
                y[r] = r % 3 == 1 ? -100 : random.nextInt(cols);
                if (y[r] != -100) counted++;
            }
            DistillationLoss cfg = new DistillationLoss(div, 2f, 0.6f, 0.3f, -100);
            float[][] cpu = run(CpuBackend.get(), s, te, y, rows, cols, cfg, DType.F32, 0);
            float[][] given = run(gpu, s, te, y, rows, cols, cfg, DType.F32, counted);
            String what = "seed " + seed + ": " + div + " " + rows + "x" + cols + " (" + gpu.distillPlan(rows, cols, DType.F32) + ")";
            try (Tensor ts = gpu.fromArray(s, rows, cols); Tensor tt = gpu.fromArray(te, rows, cols); Tensor ty = gpu.empty(DType.I64, rows).copyFrom(y);
                 Tensor loss = gpu.empty(DType.F32, 3); Tensor grad = gpu.empty(DType.F32, rows, cols);
                 org.distill4j.core.cuda.CudaGraph graph = gpu.capture(() -> gpu.distillationLoss(ts, tt, ty, cfg, 0, loss, grad))) {
                assertEquals(1, graph.nodeCount(), what + ": nodes in the captured evaluation");
                for (int replay = 0; replay < 3; replay++) {
                    graph.launch();
                    float[] l = loss.toFloatArray(), g = grad.toFloatArray();
                    assertEquals(cpu[0][0], l[0], 1e-4 * Math.max(1e-2, Math.abs(cpu[0][0])), what + " replay " + replay + " loss");
                    assertGradientClose(cpu[1], g, 1e-4, what + " replay " + replay);
                    org.junit.jupiter.api.Assertions.assertArrayEquals(given[0], l, what + ": counted vs given normalizer, loss bits");
                    org.junit.jupiter.api.Assertions.assertArrayEquals(given[1], g, what + ": counted vs given normalizer, gradient bits");
                }
            }
        }
        assertEquals(plannedRegimes(), regimes, "regimes exercised");
        // every row ignored: nothing counts
        int rows = 40, cols = 1000;
        long[] y = new long[rows];
        java.util.Arrays.fill(y, -100);
        float[][] got = run(gpu, gaussian(rows * cols, 3), gaussian(rows * cols, 3), y, rows, cols, DistillationLoss.hinton(4f, 0.5f), DType.F32, 0);
        assertTrue(Float.isNaN(got[0][0]), "all rows ignored: loss " + got[0][0]);
        for (float g : got[1]) assertEquals(0f, g, "all rows ignored: gradient");
    }

    /**
     * The split regime (seventh session, written without a GPU): rows cut into slices held by
     * groups of blocks that exchange their statistics through L2, a round apart. Against the CPU
     * oracle with more rows than groups (the ring of row statistics wraps many times), one slice a
     * row (K = 1) to 128 slices, small slices (many groups), unaligned rows, fp32 and bf16, KL,
     * MSE, and reverse KL and JSD (the _pg kernel of the eighth session: a second meeting of the
     * group a row, for the gradient's sum p g, also written without a GPU), T from
     * 0.1 (logits of 1e4) to 100, labels (ignored rows, normaliser given or counted) or none, a
     * top-k teacher (-inf outside 50 columns), gradient in place or none; then the same launch three
     * more times, bit for bit (the ring is left as found, and the merge order is fixed).
     */
    @Test
    void theSplitRegimeMatchesTheCpu() {
        org.distill4j.bindings.kernels.DistillKernels k = gpu.distillPlans();
        int[][] shapes = {{2000, 1000}, {300, 999}, {200, 4097}, {200, 32000}, {40, 131072}, {12, 262144}};
        int checked = 0;
        for (int[] shape : shapes) for (DType dtype : new DType[] {DType.F32, DType.BF16}) for (long stage : new long[] {Long.MAX_VALUE, 4096}) {
            int rows = shape[0], cols = shape[1];
            org.distill4j.bindings.kernels.DistillKernels.Plan plan;
            try {
                plan = k.explicit("split", 1, 0, rows, cols, dtype.bytes(), stage);
            } catch (IllegalArgumentException tooManySlices) {
                continue;  // 4 KiB buffers at 256k: more slices than resident blocks
            }
            assertEquals("split", plan.regime());
            Divergence div = new Divergence[] {Divergence.KL, Divergence.MSE, Divergence.KL, Divergence.REVERSE_KL, Divergence.JSD}[random.nextInt(5)];
            float t = new float[] {0.1f, 1f, 4f, 100f}[random.nextInt(4)];
            boolean labels = random.nextInt(4) != 0, topK = random.nextInt(4) == 0, inPlace = random.nextBoolean(), noGrad = random.nextInt(6) == 0;
            float[] s = gaussian(rows * cols, t == 0.1f ? 1e4 : 5), te = gaussian(rows * cols, t == 0.1f ? 1e4 : 5);
            if (topK && (div == Divergence.KL || div == Divergence.JSD)) for (int i = 0; i < te.length; i++) if (i % cols >= 50) te[i] = Float.NEGATIVE_INFINITY;
            long[] y = new long[rows];
            for (int r = 0; r < rows; r++) y[r] = r % 5 == 4 ? -100 : random.nextInt(cols);
            DistillationLoss cfg = new DistillationLoss(div, t, labels ? 0.7f : 1f, 0.5f, -100);
            long normalizer = labels && random.nextBoolean() ? 0 : rows + 3;
            String what = "seed " + seed + ": " + dtype + " " + div + " T=" + t + " " + rows + "x" + cols + (labels ? " labels" : " no labels")
                + (topK ? " top-k teacher" : "") + (noGrad ? " no gradient" : inPlace ? " in place" : "") + " normalizer " + normalizer + " " + plan;
            float[][] cpu = evaluate(CpuBackend.get(), s, te, labels ? y : null, rows, cols, cfg, dtype, normalizer, null, 1, inPlace, noGrad);
            float[][] first = evaluate(gpu, s, te, labels ? y : null, rows, cols, cfg, dtype, normalizer, plan, 1, inPlace, noGrad);
            double floor = 1e-3 * Math.max(1, cfg.alpha() * t * t) * Math.max(1, Math.log(cols));
            assertEquals(cpu[0][0], first[0][0], 1e-4 * Math.max(floor, Math.abs(cpu[0][0])), what + " loss");
            if (!noGrad) assertGradientClose(cpu[1], first[1], dtype == DType.BF16 ? 1e-2 : 1e-4, what);
            for (int again = 0; again < 3; again++) {
                float[][] next = evaluate(gpu, s, te, labels ? y : null, rows, cols, cfg, dtype, normalizer, plan, 1, inPlace, noGrad);
                org.junit.jupiter.api.Assertions.assertArrayEquals(first[0], next[0], what + ": launch " + (again + 2) + ", loss bits");
                org.junit.jupiter.api.Assertions.assertArrayEquals(first[1], next[1], what + ": launch " + (again + 2) + ", gradient bits");
            }
            checked++;
        }
        assertTrue(checked >= 20, "split plans checked: " + checked);
    }

    /**
     * A NaN logit, student's or teacher's, makes the loss NaN on CUDA as on the CPU oracle (and in
     * PyTorch), in every divergence and in the warp, block and re-read regimes: a term guarded by
     * q > 0 used to drop a NaN teacher probability silently (sixth session; written without a GPU).
     */
    @Test
    void aNaNLogitMakesTheLossNaN() {
        int[][] shapes = {{8, 300}, {8, 3000}, {2, 140000}};
        for (int[] shape : shapes) for (Divergence div : Divergence.values()) for (boolean inTeacher : new boolean[] {false, true}) {
            int rows = shape[0], cols = shape[1];
            float[] s = gaussian(rows * cols, 3), te = gaussian(rows * cols, 3);
            (inTeacher ? te : s)[cols + 7] = Float.NaN;
            long[] y = new long[rows];
            for (int r = 0; r < rows; r++) y[r] = random.nextInt(cols);
            DistillationLoss cfg = new DistillationLoss(div, 2f, 0.7f, 0.3f, -100);
            String what = div + " " + rows + "x" + cols + " NaN in the " + (inTeacher ? "teacher" : "student") + " (" + gpu.distillPlan(rows, cols, DType.F32)
                + ", seed " + seed + ")";
            float[][] cpu = run(CpuBackend.get(), s, te, y, rows, cols, cfg, DType.F32, 0), got = run(gpu, s, te, y, rows, cols, cfg, DType.F32, 0);
            assertTrue(Float.isNaN(cpu[0][0]), what + ": the oracle's loss " + cpu[0][0]);
            assertTrue(Float.isNaN(got[0][0]), what + ": CUDA's loss " + got[0][0]);
        }
    }

    private float[] gaussian(int n, double scale) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (random.nextGaussian() * scale);
        return x;
    }

    /** The regimes the planner picks on this GPU: clusters (pairs) only on sm_90+. */
    private static java.util.Set<String> plannedRegimes() {
        java.util.Set<String> regimes = new java.util.TreeSet<>(java.util.List.of("warp", "block", "reread"));
        if (gpu.context().device().computeMajor() >= 9) regimes.add("cluster");
        return regimes;
    }

    /** Every element within {@code relative} of the expected gradient's largest magnitude. */
    private static void assertGradientClose(float[] expected, float[] actual, double relative, String what) {
        double max = 1e-12, worst = 0;
        for (float v : expected) max = Math.max(max, Math.abs(v));
        for (int i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(expected[i] - actual[i]));
        assertTrue(worst <= relative * max, what + ": gradient max abs difference " + worst + " vs largest " + max);
    }

    /** Loss (3 values) and gradient (as floats) of one evaluation; BF16 rounds s and t to bf16 first. */
    private static float[][] run(org.distill4j.core.Backend b, float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, DType dtype,
                                 long normalizer) {
        return run(b, s, t, y, rows, cols, cfg, dtype, normalizer, null);
    }

    private static float[][] run(org.distill4j.core.Backend b, float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, DType dtype,
                                 long normalizer, org.distill4j.bindings.kernels.DistillKernels.Plan plan) {
        return evaluate(b, s, t, y, rows, cols, cfg, dtype, normalizer, plan, 3, false, false);
    }

    /**
     * One evaluation: {@code lossValues} loss values (1, or 3 with the soft and hard terms) and the
     * gradient (empty when not asked for), with labels y or none (null), the gradient apart, in place
     * over s, or none; with an explicit plan on CUDA, else the backend's default (the CPU's double oracle).
     */
    private static float[][] evaluate(org.distill4j.core.Backend b, float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, DType dtype,
                                      long normalizer, org.distill4j.bindings.kernels.DistillKernels.Plan plan, int lossValues, boolean inPlace,
                                      boolean noGrad) {
        try (Tensor ts = b.empty(dtype, rows, cols).copyFrom(s); Tensor tt = b.empty(dtype, rows, cols).copyFrom(t);
             Tensor ty = y == null ? null : b.empty(DType.I64, rows).copyFrom(y); Tensor loss = b.empty(DType.F32, lossValues);
             Tensor apart = noGrad || inPlace ? null : b.empty(dtype, rows, cols)) {
            Tensor grad = noGrad ? null : inPlace ? ts : apart;
            // the CPU side is the double oracle (not the float fast path, which is itself tested against it)
            if (plan != null) ((CudaBackend) b).distillationLoss(ts, tt, ty, cfg, normalizer, loss, grad, plan);
            else if (b instanceof CpuBackend cpu) cpu.referenceDistillationLoss(ts, tt, ty, cfg, normalizer, loss, grad);
            else b.distillationLoss(ts, tt, ty, cfg, normalizer, loss, grad);
            return new float[][] {loss.toFloatArray(), grad == null ? new float[0] : grad.toFloatArray()};
        }
    }

    @Test
    void inPlaceAndWithoutLabelsAndTopK() {
        int rows = 16, cols = 5000, k = 20;
        float[] s = new float[rows * cols], t = new float[rows * cols], vals = new float[rows * k];
        for (int i = 0; i < s.length; i++) {
            s[i] = (float) random.nextGaussian();
            t[i] = (float) random.nextGaussian();
        }
        long[] idx = new long[rows * k];
        for (int i = 0; i < idx.length; i++) {
            idx[i] = (i * 37L) % cols;
            vals[i] = (float) random.nextGaussian() * 3;
        }
        DistillationLoss cfg = DistillationLoss.hinton(2f, 1f);
        float[][] result = new float[2][];
        int i = 0;
        for (org.distill4j.core.Backend b : new org.distill4j.core.Backend[] {CpuBackend.get(), gpu}) {
            try (Tensor ts = b.fromArray(s, rows, cols); Tensor ti = b.empty(DType.I64, rows, k).copyFrom(idx); Tensor tv = b.fromArray(vals, rows, k);
                 Tensor dense = b.empty(DType.F32, rows, cols); Tensor loss = b.empty(DType.F32, 1)) {
                b.scatterTopK(ti, tv, dense);
                b.distillationLoss(ts, dense, null, cfg, 0, loss, ts); // in place, no labels
                result[i++] = concat(loss.toFloatArray(), ts.toFloatArray());
            }
        }
        assertGradientClose(result[0], result[1], 1e-4, "top-k, in place, no labels (loss and gradient)");
    }

    private static float[] concat(float[] a, float[] b) {
        float[] out = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    @Test
    void averagedTeachersMatchTheCpu() {
        int rows = 64, cols = 5000;
        float[][] t = new float[3][rows * cols];
        for (float[] v : t) for (int i = 0; i < v.length; i++) v[i] = (float) (random.nextGaussian() * 4);
        float[][] result = new float[2][];
        int j = 0;
        for (org.distill4j.core.Backend b : new org.distill4j.core.Backend[] {CpuBackend.get(), gpu}) {
            try (Tensor a = b.fromArray(t[0], rows, cols); Tensor c = b.fromArray(t[1], rows, cols); Tensor d = b.fromArray(t[2], rows, cols);
                 Tensor out = b.empty(DType.F32, rows, cols)) {
                b.averageTeachers(java.util.List.of(a, c, d), 4f, out);
                result[j++] = out.toFloatArray();
            }
        }
        for (int i = 0; i < result[0].length; i++) assertEquals(result[0][i], result[1][i], 1e-4 * Math.max(1, Math.abs(result[0][i])), "element " + i);
    }
}
