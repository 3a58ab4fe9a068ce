package org.distill4j.core.loss;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.Reader;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.stream.Stream;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Npy;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The CPU distillation loss against (1) PyTorch float64 + autograd fixtures (make_fixtures.py),
 * (2) a float64 reference written here over a randomized matrix of shapes, temperatures, alphas,
 * betas, label patterns and extreme logits, with its gradient checked by finite differences of
 * that reference.
 */
public class DistillationLossTest {
    private final CpuBackend cpu = CpuBackend.get();
    /** Fresh inputs every run; the seed is in every failure message, and -Ddistill4j.test.seed=N replays one. */
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);

    DistillationLossTest() {
        System.out.println("DistillationLossTest random seed " + seed);
    }

    // ---- PyTorch fixtures

    static Stream<Path> fixtures() throws URISyntaxException, java.io.IOException {
        Path root = org.distill4j.core.TestFiles.resource("/fixtures/distill-loss");
        List<Path> cases = new ArrayList<>();
        try (Stream<Path> s = Files.list(root)) {
            s.filter(Files::isDirectory).sorted().forEach(cases::add);
        }
        assertTrue(cases.size() >= 10, "fixtures missing under " + root);
        return cases.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("fixtures")
    void matchesPyTorchFloat64(Path dir) throws Exception {
        Properties p = new Properties();
        try (Reader r = Files.newBufferedReader(dir.resolve("case.properties"))) {
            p.load(r);
        }
        DistillationLoss cfg = new DistillationLoss(Divergence.parse(p.getProperty("divergence")), Float.parseFloat(p.getProperty("temperature")),
            Float.parseFloat(p.getProperty("alpha")), Float.parseFloat(p.getProperty("beta")), -100);
        Npy.Array s = Npy.read(dir.resolve("student.npy")), t = Npy.read(dir.resolve("teacher.npy"));
        double[] expectedLoss = toDoubles(Npy.read(dir.resolve("expected_loss.npy")));
        double[] expectedGrad = toDoubles(Npy.read(dir.resolve("expected_grad.npy")));
        boolean hasLabels = Boolean.parseBoolean(p.getProperty("labels"));
        for (boolean reference : new boolean[] {true, false}) for (boolean inPlace : new boolean[] {false, true}) {
            try (Tensor ts = cpu.fromArray(s.toFloats(), s.shape()); Tensor tt = cpu.fromArray(t.toFloats(), t.shape());
                 Tensor labels = hasLabels ? cpu.empty(DType.I64, s.shape()[0]).copyFrom(Npy.read(dir.resolve("labels.npy")).toLongs("labels")) : null;
                 Tensor loss = cpu.empty(DType.F32, 3); Tensor grad = inPlace ? null : cpu.empty(DType.F32, s.shape())) {
                if (reference) cpu.referenceDistillationLoss(ts, tt, labels, cfg, 0, loss, inPlace ? ts : grad);
                else cpu.distillationLoss(ts, tt, labels, cfg, 0, loss, inPlace ? ts : grad);
                float[] l = loss.toFloatArray();
                for (int i = 0; i < 3; i++) {
                    assertEquals(expectedLoss[i], l[i], tolerance(expectedLoss[0], 1e-6, cfg, reference),
                        dir.getFileName() + " loss[" + i + "]" + (reference ? " (oracle)" : " (fast path)"));
                }
                float[] g = (inPlace ? ts : grad).toFloatArray();
                double max = 1e-12;
                for (double v : expectedGrad) max = Math.max(max, Math.abs(v));
                for (int i = 0; i < g.length; i++) {
                    assertEquals(expectedGrad[i], g[i], 1e-4 * max, dir.getFileName() + " grad[" + i + "]" + (inPlace ? " (in place)" : ""));
                }
            }
        }
    }

    private static double[] toDoubles(Npy.Array a) {
        double[] out = new double[(int) a.numel()];
        for (int i = 0; i < out.length; i++) out[i] = a.data().getDouble(i * 8);
        return out;
    }

    // ---- float64 reference over a randomized matrix

    /**
     * The loss tolerance: 1e-5 relative (the bound) for the double oracle; the float fast
     * path (our C kernel, as the CUDA kernel in fp32) adds a floor for its exponentials' rounding:
     * each log-sum-exp is within about 3 ulp(1) = 3 * 2^-23 (exps of up to 2 ulp on the SSE2 copy,
     * which has no FMA, and the float lane sums), so D, a difference of two of them, is off by up to
     * 6 * 2^-23 however small D is (high T: D ~ 1e-5), and the loss by alpha T^2 times that
     * (measured: 2.5 * 2^-23 at worst over many seeds).
     */
    public static double tolerance(double expected, double relativeFloor, DistillationLoss cfg, boolean reference) {
        double strict = 1e-5 * Math.max(Math.abs(expected), relativeFloor);
        boolean fastPath = !reference;
        return fastPath ? strict + 6 * 0x1p-23 * cfg.alpha() * cfg.temperature() * cfg.temperature() : strict;
    }

    /** The loss in double, written from the definitions with full arrays (independent of CpuDistillationLoss). */
    static double reference(float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, long normalizer) {
        double total = 0;
        int counted = 0;
        double T = cfg.temperature(), beta = cfg.beta();
        for (int r = 0; r < rows; r++) {
            if (y != null && y[r] == cfg.ignoreIndex()) continue;
            counted++;
            double[] lp = logSoftmax(s, r, cols, T), lq = logSoftmax(t, r, cols, T);
            double d = 0;
            for (int c = 0; c < cols; c++) {
                double p = Math.exp(lp[c]), q = Math.exp(lq[c]);
                switch (cfg.effectiveDivergence()) {
                    case KL -> d += q == 0 ? 0 : q * (lq[c] - lp[c]);
                    case REVERSE_KL -> d += p == 0 ? 0 : p * (lp[c] - lq[c]);
                    case JSD -> {
                        double m = (1 - beta) * p + beta * q;
                        double lm = m > 0 ? Math.log(m) : Math.max(Math.log(1 - beta) + lp[c], Math.log(beta) + lq[c]);
                        d += (q == 0 ? 0 : beta * q * (lq[c] - lm)) + (p == 0 ? 0 : (1 - beta) * p * (lp[c] - lm));
                    }
                    case MSE -> d += Math.pow((s[r * cols + c] - (double) t[r * cols + c]) / T, 2) / cols;
                }
            }
            total += cfg.alpha() * T * T * d;
            if (y != null && cfg.alpha() < 1) total -= (1 - cfg.alpha()) * logSoftmax(s, r, cols, 1)[(int) y[r]];
        }
        return total / (normalizer > 0 ? normalizer : counted);
    }

    private static double[] logSoftmax(float[] x, int r, int cols, double T) {
        double max = Double.NEGATIVE_INFINITY;
        for (int c = 0; c < cols; c++) max = Math.max(max, x[r * cols + c] / T);
        double sum = 0;
        for (int c = 0; c < cols; c++) sum += Math.exp(x[r * cols + c] / T - max);
        double[] out = new double[cols];
        for (int c = 0; c < cols; c++) out[c] = x[r * cols + c] / T - max - Math.log(sum);
        return out;
    }

    /**
     * The gradient's absolute fp32 precision, in ulps of the largest each term can be: p - q at
     * high T, two values near 1/C each off by an ulp, times alpha T / N; and, with labels,
     * softmax(s) - [j == y] at a confident row, where a value just below 1 (ulp 2^-24) less 1
     * leaves ~1e-5 known to a few 2^-24, times (1 - alpha) / N (measured: 2^-25, 8e-4 relative, at
     * 2 columns with a logit gap of ~10, seed 9402858531304; CE alone, alpha = 0, so the row's
     * largest gradient was that element itself). n: the normaliser.
     */
    public static double gradientFloor(float alpha, float T, boolean labels, double n) {
        return 0x1p-21 * (alpha * T + (labels ? 1 - alpha : 0)) / n;
    }

    @Test
    void randomizedMatrixOfSettingsAgainstTheFloat64Reference() {
        int[][] shapes = {{1, 1}, {1, 2}, {3, 7}, {17, 31}, {64, 1000}, {5, 5003}};
        float[] temperatures = {0.1f, 1f, 3f, 4f, 100f};
        for (int[] shape : shapes) for (Divergence div : Divergence.values()) for (float T : temperatures) {
            int rows = shape[0], cols = shape[1];
            float alpha = random.nextBoolean() ? 1f : random.nextFloat();
            float beta = new float[] {0f, 1f, 0.5f, random.nextFloat()}[random.nextInt(4)];
            double logitScale = new double[] {1, 5, 1e4}[random.nextInt(3)];
            boolean labels = alpha < 1 || random.nextBoolean();
            DistillationLoss cfg = new DistillationLoss(div, T, alpha, beta, -100);
            float[] s = logits(rows * cols, logitScale), t = logits(rows * cols, logitScale);
            long[] y = labels ? labels(rows, cols, random.nextBoolean()) : null;
            if (y != null && java.util.Arrays.stream(y).allMatch(v -> v == -100)) y[0] = 0;
            double expected = reference(s, t, y, rows, cols, cfg, 0);
            for (boolean reference : new boolean[] {true, false}) {
                float got = run(s, t, y, rows, cols, cfg, 0, null, reference);
                String what = div + " T=" + T + " alpha=" + alpha + " beta=" + beta + " scale=" + logitScale + " " + rows + "x" + cols
                    + (reference ? " (oracle)" : " (fast path)") + " seed " + seed;
                assertEquals(expected, got, tolerance(expected, 1e-3, cfg, reference), what);
                if (rows * cols <= 300 && logitScale < 1e4) gradientByFiniteDifferences(s, t, y, rows, cols, cfg, what, reference);
            }
        }
    }

    /** 2^20 rows (the upper bound), against the float64 reference. */
    @Test
    void aMillionRows() {
        int rows = 1 << 20, cols = 3;
        for (Divergence div : new Divergence[] {Divergence.KL, Divergence.JSD}) {
            DistillationLoss cfg = new DistillationLoss(div, 2f, 0.5f, 0.5f, -100);
            float[] s = logits(rows * cols, 3), t = logits(rows * cols, 3);
            long[] y = labels(rows, cols, true);
            double expected = reference(s, t, y, rows, cols, cfg, 0);
            for (boolean reference : new boolean[] {true, false}) {
                assertEquals(expected, run(s, t, y, rows, cols, cfg, 0, null, reference), tolerance(expected, 0, cfg, reference),
                    div + " with 2^20 rows" + (reference ? " (oracle)" : " (fast path)"));
            }
        }
    }

    private void gradientByFiniteDifferences(float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, String what, boolean reference) {
        float[] analytic = new float[rows * cols];
        run(s, t, y, rows, cols, cfg, 0, analytic, reference);
        // Central differences through float32 inputs carry ~1e-3 relative error; near-one-hot rows (T = 0.1)
        // have gradients around 1e-7, so the absolute floor is 1e-4 of the largest gradient or 1e-8.
        double max = 1e-4;
        for (float a : analytic) max = Math.max(max, Math.abs(a));
        // The fast path's fp32 floor on top (a confident row's softmax(s) - 1 was 0.7% off a 2.7e-6 element, 1.9e-8, against
        // 1.5e-8 allowed: reverse KL, T = 0.1, 1 x 2, seed 6115141363293; the kernel's bits were the same before the tenth session).
        long counted = y == null ? rows : java.util.Arrays.stream(y).filter(v -> v != cfg.ignoreIndex()).count();
        double floor = reference ? 0 : gradientFloor(cfg.alpha(), cfg.temperature(), y != null, counted);
        for (int i = 0; i < s.length; i++) {
            float saved = s[i];
            double h = 1e-3 * Math.max(1, Math.abs(saved));
            s[i] = (float) (saved + h);
            double up = reference(s, t, y, rows, cols, cfg, 0);
            double hUp = s[i] - saved;
            s[i] = (float) (saved - h);
            double down = reference(s, t, y, rows, cols, cfg, 0);
            double hDown = saved - s[i];
            s[i] = saved;
            double numeric = (up - down) / (hUp + hDown);
            assertEquals(numeric, analytic[i], 1e-4 * max + 2e-3 * Math.abs(numeric) + floor, what + " d/ds[" + i + "] (seed " + seed + ")");
        }
    }

    private float run(float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, long normalizer, float[] gradOut) {
        return run(s, t, y, rows, cols, cfg, normalizer, gradOut, false);
    }

    /** One evaluation on the CPU backend: its default path (the float fast path for KL and MSE), or the double oracle. */
    private float run(float[] s, float[] t, long[] y, int rows, int cols, DistillationLoss cfg, long normalizer, float[] gradOut, boolean reference) {
        try (Tensor ts = cpu.fromArray(s, rows, cols); Tensor tt = cpu.fromArray(t, rows, cols);
             Tensor ty = y == null ? null : cpu.empty(DType.I64, rows).copyFrom(y); Tensor loss = cpu.empty(DType.F32, 1);
             Tensor grad = gradOut == null ? null : cpu.empty(DType.F32, rows, cols)) {
            if (reference) cpu.referenceDistillationLoss(ts, tt, ty, cfg, normalizer, loss, grad);
            else cpu.distillationLoss(ts, tt, ty, cfg, normalizer, loss, grad);
            if (gradOut != null) System.arraycopy(grad.toFloatArray(), 0, gradOut, 0, gradOut.length);
            return loss.item();
        }
    }

    private float[] logits(int n, double scale) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (random.nextGaussian() * scale);
        return x;
    }

    private long[] labels(int rows, int cols, boolean someIgnored) {
        long[] y = new long[rows];
        for (int r = 0; r < rows; r++) y[r] = someIgnored && r % 3 == 1 ? -100 : random.nextInt(cols);
        return y;
    }

    // ---- accumulation, top-k, errors

    /**
     * BF16 logits: the loss is the F32 loss of the same (widened) values, bit for bit, and the
     * gradient is the F32 gradient rounded to BF16 to nearest even.
     */
    @Test
    void bf16LogitsAreTheF32LossOfTheSameValues() {
        Backend b = CpuBackend.get();
        int rows = 9, cols = 301;
        Random r = new Random(5);
        for (Divergence div : Divergence.values()) {
            short[] sb = new short[rows * cols], tb = new short[rows * cols];
            float[] sf = new float[rows * cols], tf = new float[rows * cols];
            for (int i = 0; i < sb.length; i++) {
                sb[i] = org.distill4j.core.Bf16.fromFloat((float) r.nextGaussian() * 4);
                tb[i] = org.distill4j.core.Bf16.fromFloat((float) r.nextGaussian() * 4);
                sf[i] = org.distill4j.core.Bf16.toFloat(sb[i]);
                tf[i] = org.distill4j.core.Bf16.toFloat(tb[i]);
            }
            long[] y = new long[rows];
            for (int i = 0; i < rows; i++) y[i] = i % 3 == 2 ? -100 : r.nextInt(cols);
            DistillationLoss cfg = new DistillationLoss(div, 2.5f, 0.6f, 0.4f, -100);
            try (Tensor s16 = b.empty(DType.BF16, rows, cols); Tensor t16 = b.empty(DType.BF16, rows, cols); Tensor g16 = b.empty(DType.BF16, rows, cols);
                 Tensor s32 = b.fromArray(sf, rows, cols); Tensor t32 = b.fromArray(tf, rows, cols); Tensor g32 = b.empty(DType.F32, rows, cols);
                 Tensor labels = b.empty(DType.I64, rows).copyFrom(y); Tensor l16 = b.empty(DType.F32, 3); Tensor l32 = b.empty(DType.F32, 3)) {
                b.copyFromHost(java.lang.foreign.MemorySegment.ofArray(sb), s16);
                b.copyFromHost(java.lang.foreign.MemorySegment.ofArray(tb), t16);
                b.distillationLoss(s16, t16, labels, cfg, 0, l16, g16);
                b.distillationLoss(s32, t32, labels, cfg, 0, l32, g32);
                assertArrayEquals(l32.toFloatArray(), l16.toFloatArray(), div + ": loss");
                float[] g = g32.toFloatArray();
                short[] got = new short[rows * cols];
                b.copyToHost(g16, java.lang.foreign.MemorySegment.ofArray(got));
                for (int i = 0; i < g.length; i++) assertEquals(org.distill4j.core.Bf16.fromFloat(g[i]), got[i], div + ": gradient element " + i);
            }
        }
    }

    @Test
    void accumulatedMicroBatchesGiveTheFullBatchGradient() {
        int rows = 12, cols = 40;
        float[] s = logits(rows * cols, 3), t = logits(rows * cols, 3);
        long[] y = labels(rows, cols, true);
        long counted = java.util.Arrays.stream(y).filter(v -> v != -100).count();
        DistillationLoss cfg = DistillationLoss.hinton(4f, 0.9f);
        float[] full = new float[rows * cols];
        float fullLoss = run(s, t, y, rows, cols, cfg, 0, full);
        float[] acc = new float[rows * cols];
        double accLoss = 0;
        for (int half = 0; half < 2; half++) {
            int r0 = half * rows / 2;
            float[] part = new float[rows / 2 * cols];
            accLoss += run(java.util.Arrays.copyOfRange(s, r0 * cols, (r0 + rows / 2) * cols), java.util.Arrays.copyOfRange(t, r0 * cols, (r0 + rows / 2) * cols),
                java.util.Arrays.copyOfRange(y, r0, r0 + rows / 2), rows / 2, cols, cfg, counted, part);
            System.arraycopy(part, 0, acc, r0 * cols, part.length);
        }
        assertEquals(fullLoss, accLoss, 1e-6 * Math.abs(fullLoss));
        for (int i = 0; i < full.length; i++) assertEquals(full[i], acc[i], 1e-7 + 1e-6 * Math.abs(full[i]), "grad[" + i + "]");
    }

    @Test
    void topKTeacherIsTheRenormalisedDistributionOverItsEntries() {
        int rows = 4, cols = 50, k = 5;
        float[] s = logits(rows * cols, 2), values = logits(rows * k, 2);
        long[] idx = new long[rows * k];
        for (int r = 0; r < rows; r++) for (int j = 0; j < k; j++) idx[r * k + j] = (j * 7 + r) % cols;
        float[] dense = new float[rows * cols];
        java.util.Arrays.fill(dense, Float.NEGATIVE_INFINITY);
        for (int r = 0; r < rows; r++) for (int j = 0; j < k; j++) dense[(int) (r * cols + idx[r * k + j])] = values[r * k + j];
        try (Tensor ti = cpu.empty(DType.I64, rows, k).copyFrom(idx); Tensor tv = cpu.fromArray(values, rows, k);
             Tensor td = cpu.empty(DType.F32, rows, cols)) {
            cpu.scatterTopK(ti, tv, td);
            assertArrayEquals(dense, td.toFloatArray());
        }
        for (Divergence div : new Divergence[] {Divergence.KL, Divergence.JSD}) {
            DistillationLoss cfg = new DistillationLoss(div, 2f, 1f, 0.5f, -100);
            double expected = reference(s, dense, null, rows, cols, cfg, 0);
            float got = run(s, dense, null, rows, cols, cfg, 0, new float[rows * cols]);
            assertEquals(expected, got, 1e-5 * Math.abs(expected), "top-k " + div);
            assertTrue(Double.isFinite(got));
        }
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
            () -> run(s, dense, null, rows, cols, new DistillationLoss(Divergence.REVERSE_KL, 2f, 1f, 0.5f, -100), 0, null));
        assertTrue(e.getMessage().contains("top-k"), e.getMessage());
    }

    @Test
    void badInputIsAClearError() {
        float[] s = logits(6, 1), t = logits(6, 1);
        IllegalArgumentException label = assertThrows(IllegalArgumentException.class,
            () -> run(s, t, new long[] {0, 3}, 2, 3, DistillationLoss.hinton(2f, 0.5f), 0, null));
        assertTrue(label.getMessage().contains("label 3 at row 1 is outside [0, 3)"), label.getMessage());
        IllegalArgumentException alpha = assertThrows(IllegalArgumentException.class,
            () -> run(s, t, null, 2, 3, DistillationLoss.hinton(2f, 0.5f), 0, null));
        assertTrue(alpha.getMessage().contains("no labels"), alpha.getMessage());
        assertThrows(IllegalArgumentException.class, () -> new DistillationLoss(Divergence.KL, 0f, 1f, 0.5f, -100));
        assertThrows(IllegalArgumentException.class, () -> new DistillationLoss(Divergence.KL, 1f, 1.5f, 0.5f, -100));
        assertThrows(IllegalArgumentException.class, () -> new DistillationLoss(Divergence.JSD, 1f, 1f, -0.1f, -100));
        assertThrows(IllegalArgumentException.class, () -> Divergence.parse("kld"));
        try (Tensor a = cpu.zeros(DType.F32, 2, 3); Tensor b = cpu.zeros(DType.F32, 2, 4); Tensor loss = cpu.empty(DType.F32, 1)) {
            IllegalArgumentException shape = assertThrows(IllegalArgumentException.class,
                () -> cpu.distillationLoss(a, b, null, DistillationLoss.hinton(1f, 1f), 0, loss, null));
            assertTrue(shape.getMessage().contains("[2, 3]") && shape.getMessage().contains("[2, 4]"), shape.getMessage());
        }
        assertFalse(Float.isNaN(run(s, t, null, 2, 3, DistillationLoss.hinton(2f, 1f), 0, null)));
    }

    @Test
    void averagedTeachersHaveTheMeanSoftenedDistribution() {
        int rows = 5, cols = 37;
        float t = 3f;
        for (double scale : new double[] {2, 1e4}) {
            float[] a = logits(rows * cols, scale), b = logits(rows * cols, scale), c = logits(rows * cols, scale);
            try (Tensor ta = cpu.fromArray(a, rows, cols); Tensor tb = cpu.fromArray(b, rows, cols); Tensor tc = cpu.fromArray(c, rows, cols);
                 Tensor out = cpu.empty(DType.F32, rows, cols)) {
                cpu.averageTeachers(List.of(ta, tb, tc), t, out);
                float[] o = out.toFloatArray();
                for (int r = 0; r < rows; r++) {
                    double[] la = logSoftmax(a, r, cols, t), lb = logSoftmax(b, r, cols, t), lc = logSoftmax(c, r, cols, t);
                    float[] row = java.util.Arrays.copyOfRange(o, r * cols, (r + 1) * cols);
                    double[] lo = logSoftmax(row, 0, cols, t);
                    for (int i = 0; i < cols; i++) {
                        double mean = (Math.exp(la[i]) + Math.exp(lb[i]) + Math.exp(lc[i])) / 3;
                        assertEquals(mean, Math.exp(lo[i]), 1e-5 * Math.max(mean, 1e-3), "row " + r + " class " + i + " scale " + scale);
                    }
                }
            }
        }
        try (Tensor one = cpu.fromArray(logits(6, 1), 2, 3); Tensor out = cpu.empty(DType.F32, 2, 3)) {
            assertThrows(IllegalArgumentException.class, () -> cpu.averageTeachers(List.of(), 2f, out));
            assertThrows(IllegalArgumentException.class, () -> cpu.averageTeachers(List.of(one), 0f, out));
        }
    }
}
