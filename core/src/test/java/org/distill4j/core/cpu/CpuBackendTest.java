package org.distill4j.core.cpu;

import static org.distill4j.core.Check.close;
import static org.distill4j.core.Check.dot;
import static org.distill4j.core.Check.gradient;
import static org.distill4j.core.Check.randn;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Random;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.DType;
import org.distill4j.core.Init;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Pool2dParams;
import org.distill4j.core.PoolMode;
import org.distill4j.core.Reduction;
import org.distill4j.core.SpecialFunctions;
import org.distill4j.core.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Every CPU op against a float64 reference written out here, on fresh random inputs and awkward
 * shapes, and every backward against central finite differences.
 */
class CpuBackendTest {
    private final Backend cpu = CpuBackend.get();
    /** Fresh inputs every run; the seed is in every failure message, and -Ddistill4j.test.seed=N replays one. */
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);

    CpuBackendTest() {
        System.out.println("CpuBackendTest random seed " + seed + " (fresh inputs every run; the seed reproduces a failure)");
    }
    private static final double ELEMENTWISE = 1e-5, THROUGH_GEMM = 1e-4;

    private Tensor t(float[] v, long... shape) {
        return cpu.fromArray(v, shape);
    }

    // ---- gemm

    @Test
    void batchedGemmWithAlphaBetaAndTransposes() {
        int[][] shapes = {{1, 1, 1, 1}, {3, 7, 13, 5}, {2, 31, 33, 17}, {4, 64, 1, 97}};
        for (int[] s : shapes) for (boolean ta : new boolean[] {false, true}) for (boolean tb : new boolean[] {false, true}) {
            int b = s[0], m = s[1], n = s[2], k = s[3];
            float[] a = randn(random, b * m * k), bm = randn(random, b * k * n), c = randn(random, b * m * n);
            try (Tensor ta_ = t(a, b, ta ? k : m, ta ? m : k); Tensor tb_ = t(bm, b, tb ? n : k, tb ? k : n); Tensor tc = t(c, b, m, n)) {
                cpu.gemm(ta, tb, 0.5f, ta_, tb_, 2f, tc);
                double[] expected = new double[b * m * n];
                for (int q = 0; q < b; q++) for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) {
                    double sum = 0;
                    for (int p = 0; p < k; p++) {
                        double av = ta ? a[q * m * k + p * m + i] : a[q * m * k + i * k + p];
                        double bv = tb ? bm[q * k * n + j * k + p] : bm[q * k * n + p * n + j];
                        sum += av * bv;
                    }
                    expected[q * m * n + i * n + j] = 0.5 * sum + 2 * c[q * m * n + i * n + j];
                }
                close(expected, tc.toFloatArray(), THROUGH_GEMM, Math.sqrt(k), "gemm " + java.util.Arrays.toString(s) + " ta=" + ta + " tb=" + tb);
            }
        }
    }

    @Test
    void gemmShapeMismatchNamesTheOpAndShapes() {
        try (Tensor a = cpu.zeros(DType.F32, 3, 4); Tensor b = cpu.zeros(DType.F32, 5, 2); Tensor c = cpu.zeros(DType.F32, 3, 2)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> cpu.gemm(false, false, 1, a, b, 0, c));
            assertTrue(e.getMessage().startsWith("gemm:") && e.getMessage().contains("[3, 4]") && e.getMessage().contains("[5, 2]"), e.getMessage());
        }
    }

    // ---- bias

    /** biasAdd over the last axis (rank 2, a [B, T, D] with T == D, an image's W) and channelBiasAdd over axis 1 (NCHW). */
    @Test
    void biasAddAndGradOnMatricesSequencesAndImages() {
        for (boolean channelAxis : new boolean[] {false, true}) for (long[] shape : new long[][] {{7, 13}, {3, 5, 4, 6}, {1, 1}, {2, 5, 5}}) {
            int n = (int) org.distill4j.core.Tensor.numel(shape), f = (int) (channelAxis ? shape[1] : shape[shape.length - 1]);
            int inner = channelAxis ? n / (int) shape[0] / f : 1;
            float[] y = randn(random, n), b = randn(random, f);
            try (Tensor ty = t(y, shape); Tensor tb = t(b, f); Tensor db = cpu.zeros(DType.F32, f)) {
                if (channelAxis) cpu.channelBiasAdd(ty, tb);
                else cpu.biasAdd(ty, tb);
                double[] expected = new double[n];
                double[] grad = new double[f];
                for (int i = 0; i < n; i++) {
                    int c = (i / inner) % f;
                    expected[i] = y[i] + b[c];
                    grad[c] += y[i];
                }
                close(expected, ty.toFloatArray(), ELEMENTWISE, 1, "biasAdd channelAxis=" + channelAxis + " " + java.util.Arrays.toString(shape));
                try (Tensor dy = t(y, shape)) {
                    if (channelAxis) cpu.channelBiasGrad(dy, db, false);
                    else cpu.biasGrad(dy, db, false);
                    close(grad, db.toFloatArray(), ELEMENTWISE, 1, "biasGrad");
                    if (channelAxis) cpu.channelBiasGrad(dy, db, true);
                    else cpu.biasGrad(dy, db, true);
                    for (int c = 0; c < f; c++) grad[c] *= 2;
                    close(grad, db.toFloatArray(), ELEMENTWISE, 1, "biasGrad accumulate");
                }
            }
        }
    }

    // ---- activations

    private static double reference(Activation kind, double slope, double x) {
        return switch (kind) {
            case RELU -> Math.max(x, 0);
            case LEAKY_RELU -> x >= 0 ? x : slope * x;
            case GELU -> x * 0.5 * (1 + SpecialFunctions.erf(x / Math.sqrt(2)));
            case GELU_TANH -> 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * Math.pow(x, 3))));
            case TANH -> Math.tanh(x);
            case SIGMOID -> 1 / (1 + Math.exp(-x));
        };
    }

    @ParameterizedTest
    @EnumSource(Activation.class)
    void activationForwardAndBackward(Activation kind) {
        float slope = 0.07f;
        int rows = 37, cols = 61;
        float[] x = randn(random, rows * cols);
        for (int i = 0; i < x.length; i++) x[i] *= 3; // reach the tails
        double[] expected = new double[x.length];
        for (int i = 0; i < x.length; i++) expected[i] = reference(kind, slope, x[i]);
        try (Tensor tx = t(x, rows, cols); Tensor ty = cpu.empty(DType.F32, rows, cols)) {
            cpu.activation(kind, slope, tx, ty);
            // GELU on the oneDNN engine is oneDNN's float32 kernel (OnednnEltwise): in the negative tail 1 + tanh (or erfc) cancels
            // in float, as in PyTorch's float kernel, so there it is held to 1e-5 absolute rather than relative (our loops: double).
            boolean floatGelu = (kind == Activation.GELU || kind == Activation.GELU_TANH) && OnednnEltwise.enabled();
            close(expected, ty.toFloatArray(), ELEMENTWISE, floatGelu ? 1 : 1e-3, kind + " forward");
        }
        // Backward: avoid the kink of ReLU/LeakyReLU, where the derivative is not defined.
        float[] xs = randn(random, 40);
        for (int i = 0; i < xs.length; i++) if (Math.abs(xs[i]) < 0.05f) xs[i] += 0.2f;
        float[] w = randn(random, xs.length);
        float[] analytic;
        try (Tensor tx = t(xs, 4, 10); Tensor ty = cpu.empty(DType.F32, 4, 10); Tensor dy = t(w, 4, 10); Tensor dx = cpu.empty(DType.F32, 4, 10)) {
            cpu.activation(kind, slope, tx, ty);
            cpu.activationBackward(kind, slope, tx, ty, dy, dx);
            analytic = dx.toFloatArray();
        }
        gradient(xs, analytic, v -> {
            double s = 0;
            for (int i = 0; i < v.length; i++) s += reference(kind, slope, v[i]) * w[i];
            return s;
        }, 1e-3, 1e-4, kind + " backward");
        // ...and through the op itself in float32 (the check the backward is consistent with the forward).
        gradient(xs, analytic, v -> {
            try (Tensor tx = t(v, 4, 10); Tensor ty = cpu.empty(DType.F32, 4, 10)) {
                cpu.activation(kind, slope, tx, ty);
                return dot(ty.toFloatArray(), w);
            }
        }, 1e-2, 2e-2, kind + " backward (float32 forward)");
    }

    /**
     * ReLU is y = x > 0 ? x : +0 and its backward dx = x > 0 ? dy : +0, bit for bit, in the native
     * kernels and in the Java loops (which select with a mask, not a branch): at both zeros,
     * subnormals, the infinities, NaNs of either sign, and with NaN, -0 and infinite gradients, then
     * on random values (more than one 64Ki block, so the chunking is covered too).
     */
    @Test
    void reluIsTheSelectBitForBit() {
        float[] special = {0f, -0f, Float.MIN_VALUE, -Float.MIN_VALUE, Float.MIN_NORMAL, Float.MAX_VALUE, -Float.MAX_VALUE, Float.POSITIVE_INFINITY,
            Float.NEGATIVE_INFINITY, Float.NaN, Float.intBitsToFloat(0xFFC00000), Float.intBitsToFloat(0x7F800001), 1f, -1f, 3.5e-39f, -2f};
        float[] grads = {2.5f, Float.NaN, -0f, Float.NEGATIVE_INFINITY, -7f, Float.MIN_VALUE};
        int n = special.length * grads.length + 150_000;
        float[] x = new float[n], dy = new float[n];
        int k = 0;
        for (float sx : special) for (float g : grads) { x[k] = sx; dy[k++] = g; }
        for (; k < n; k++) { x[k] = (float) random.nextGaussian(); dy[k] = (float) random.nextGaussian(); }
        boolean was = CpuKernels.nativeRelu();
        try {
            // The native kernels (libdistill4j_cpu, when loaded) and the Java loops, each against the definition.
            for (boolean nativeKernels : new boolean[] {true, false}) {
                CpuKernels.useNativeRelu(nativeKernels);
                String path = CpuKernels.nativeRelu() ? "native" : "Java";
                try (Tensor tx = t(x, 1, n); Tensor ty = cpu.empty(DType.F32, 1, n); Tensor tdy = t(dy, 1, n); Tensor dx = cpu.empty(DType.F32, 1, n)) {
                    cpu.activation(Activation.RELU, 0f, tx, ty);
                    cpu.activationBackward(Activation.RELU, 0f, tx, ty, tdy, dx);
                    float[] gotY = ty.toFloatArray(), got = dx.toFloatArray();
                    for (int i = 0; i < n; i++) {
                        float wantY = x[i] > 0 ? x[i] : 0f, want = x[i] > 0 ? dy[i] : 0f;
                        String at = path + ": x " + x[i] + " (0x" + Integer.toHexString(Float.floatToRawIntBits(x[i])) + "), dy " + dy[i];
                        assertEquals(Float.floatToRawIntBits(wantY), Float.floatToRawIntBits(gotY[i]), at + ": forward want " + wantY + ", got " + gotY[i]);
                        assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(got[i]), at + ": backward want " + want + ", got " + got[i]);
                    }
                }
            }
        } finally {
            CpuKernels.useNativeRelu(was);
        }
    }

    // ---- softmax

    @Test
    void softmaxAndLogSoftmaxForwardAndBackward() {
        for (int[] s : new int[][] {{1, 1}, {3, 7}, {17, 1000}, {2, 32769}}) {
            int rows = s[0], cols = s[1];
            float[] x = randn(random, rows * cols);
            for (int i = 0; i < x.length; i++) x[i] *= 5;
            double[] sm = new double[x.length], lsm = new double[x.length];
            for (int r = 0; r < rows; r++) {
                double max = Double.NEGATIVE_INFINITY, sum = 0;
                for (int c = 0; c < cols; c++) max = Math.max(max, x[r * cols + c]);
                for (int c = 0; c < cols; c++) sum += Math.exp(x[r * cols + c] - max);
                for (int c = 0; c < cols; c++) {
                    lsm[r * cols + c] = x[r * cols + c] - max - Math.log(sum);
                    sm[r * cols + c] = Math.exp(lsm[r * cols + c]);
                }
            }
            try (Tensor tx = t(x, rows, cols); Tensor ty = cpu.empty(DType.F32, rows, cols)) {
                cpu.softmax(tx, ty);
                close(sm, ty.toFloatArray(), ELEMENTWISE, 1e-6, "softmax " + rows + "x" + cols);
                cpu.logSoftmax(tx, ty);
                close(lsm, ty.toFloatArray(), ELEMENTWISE, 1, "logSoftmax " + rows + "x" + cols);
            }
        }
        for (boolean log : new boolean[] {false, true}) {
            float[] x = randn(random, 3 * 9), w = randn(random, 3 * 9);
            float[] analytic;
            try (Tensor tx = t(x, 3, 9); Tensor ty = cpu.empty(DType.F32, 3, 9); Tensor dy = t(w, 3, 9); Tensor dx = cpu.empty(DType.F32, 3, 9)) {
                if (log) { cpu.logSoftmax(tx, ty); cpu.logSoftmaxBackward(ty, dy, dx); }
                else { cpu.softmax(tx, ty); cpu.softmaxBackward(ty, dy, dx); }
                analytic = dx.toFloatArray();
            }
            gradient(x, analytic, v -> {
                try (Tensor tx = t(v, 3, 9); Tensor ty = cpu.empty(DType.F32, 3, 9)) {
                    if (log) cpu.logSoftmax(tx, ty); else cpu.softmax(tx, ty);
                    return dot(ty.toFloatArray(), w);
                }
            }, 1e-2, 1e-2, (log ? "logSoftmax" : "softmax") + " backward");
        }
    }

    // ---- cross-entropy

    private static double crossEntropyReference(float[] x, long[] y, int rows, int cols, int ignore, double eps) {
        double total = 0;
        int counted = 0;
        for (int r = 0; r < rows; r++) {
            if (y[r] == ignore) continue;
            counted++;
            double max = Double.NEGATIVE_INFINITY, sum = 0;
            for (int c = 0; c < cols; c++) max = Math.max(max, x[r * cols + c]);
            for (int c = 0; c < cols; c++) sum += Math.exp(x[r * cols + c] - max);
            double lse = max + Math.log(sum), row = 0;
            for (int c = 0; c < cols; c++) {
                double target = (c == y[r] ? 1 - eps : 0) + eps / cols;
                row -= target * (x[r * cols + c] - lse);
            }
            total += row;
        }
        return total / counted;
    }

    @Test
    void crossEntropyWithIgnoreIndexAndLabelSmoothing() {
        for (float eps : new float[] {0f, 0.1f}) for (int[] s : new int[][] {{1, 2}, {13, 10}, {64, 1001}, {300, 37}}) { // the last two: several chunks of rows, run in parallel
            int rows = s[0], cols = s[1];
            float[] x = randn(random, rows * cols);
            long[] y = new long[rows];
            for (int r = 0; r < rows; r++) y[r] = r % 5 == 3 ? -100 : random.nextInt(cols);
            if (rows == 1) y[0] = 1;
            double expected = crossEntropyReference(x, y, rows, cols, -100, eps);
            float[] analytic;
            try (Tensor tx = t(x, rows, cols); Tensor ty = cpu.empty(DType.I64, rows).copyFrom(y); Tensor loss = cpu.empty(DType.F32, 1);
                 Tensor grad = cpu.empty(DType.F32, rows, cols)) {
                cpu.crossEntropy(tx, ty, -100, eps, loss, grad);
                close(new double[] {expected}, new float[] {loss.item()}, ELEMENTWISE, 1, "crossEntropy eps=" + eps + " " + rows + "x" + cols);
                analytic = grad.toFloatArray();
                for (int r = 0; r < rows; r++) if (y[r] == -100) for (int c = 0; c < cols; c++) assertEquals(0f, analytic[r * cols + c]);
            }
            if (rows * cols <= 200) {
                gradient(x, analytic, v -> crossEntropyReference(v, y, rows, cols, -100, eps), 1e-3, 1e-3, "crossEntropy gradient");
            }
        }
    }

    /** fill writes exactly its tensor: every element's bits (1.5, -0.0, +0.0, NaN), not one float beyond a view, at an odd size and one over many chunks. */
    @Test
    void fillSetsEveryElementOfLargeAndOddSizes() {
        for (int n : new int[] {1, 7, 16_385, 1_000_003}) {
            try (Tensor whole = cpu.empty(DType.F32, n + 2)) {
                Tensor inner = whole.narrow0(1, n);
                for (float value : new float[] {1.5f, -0.0f, 0f, Float.NaN}) {
                    cpu.fill(whole, 7f);
                    cpu.fill(inner, value);
                    float[] got = whole.toFloatArray();
                    assertEquals(7f, got[0], "the float before the view, n = " + n);
                    assertEquals(7f, got[n + 1], "the float after the view, n = " + n);
                    for (int i = 1; i <= n; i++) {
                        if (Float.floatToRawIntBits(got[i]) != Float.floatToRawIntBits(value)) {
                            throw new AssertionError("fill(" + value + ") of " + n + " floats: element " + (i - 1) + " is " + got[i]);
                        }
                    }
                }
            }
        }
    }

    @Test
    void crossEntropyRejectsLabelsOutOfRange() {
        try (Tensor x = cpu.zeros(DType.F32, 2, 3); Tensor y = cpu.empty(DType.I64, 2).copyFrom(new long[] {1, 3}); Tensor loss = cpu.empty(DType.F32, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> cpu.crossEntropy(x, y, -100, 0, loss, null));
            assertTrue(e.getMessage().contains("label 3 at row 1 is outside [0, 3)"), e.getMessage());
        }
    }

    // ---- reductions, elementwise, classification

    @ParameterizedTest
    @EnumSource(Reduction.class)
    void rowAndColumnReductions(Reduction kind) {
        int rows = 23, cols = 129;
        float[] x = randn(random, rows * cols);
        double[] byRow = new double[rows], byCol = new double[cols];
        for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) {
            double v = x[r * cols + c];
            boolean first = kind == Reduction.MAX && c == 0, firstCol = kind == Reduction.MAX && r == 0;
            byRow[r] = kind == Reduction.MAX ? (first ? v : Math.max(byRow[r], v)) : byRow[r] + v;
            byCol[c] = kind == Reduction.MAX ? (firstCol ? v : Math.max(byCol[c], v)) : byCol[c] + v;
        }
        if (kind == Reduction.MEAN) {
            for (int r = 0; r < rows; r++) byRow[r] /= cols;
            for (int c = 0; c < cols; c++) byCol[c] /= rows;
        }
        try (Tensor tx = t(x, rows, cols); Tensor outR = cpu.empty(DType.F32, rows); Tensor outC = cpu.empty(DType.F32, cols)) {
            cpu.reduceRows(kind, tx, outR);
            cpu.reduceCols(kind, tx, outC);
            close(byRow, outR.toFloatArray(), ELEMENTWISE, 1, "reduceRows " + kind);
            close(byCol, outC.toFloatArray(), ELEMENTWISE, 1, "reduceCols " + kind);
        }
    }

    @Test
    void elementwiseOps() {
        int n = 100_003;
        float[] a = randn(random, n), b = randn(random, n);
        double[] sum = new double[n], prod = new double[n], axpy = new double[n], scaled = new double[n];
        for (int i = 0; i < n; i++) {
            sum[i] = (double) a[i] + b[i];
            prod[i] = (double) a[i] * b[i];
            axpy[i] = 1.5 * a[i] + b[i];
            scaled[i] = -0.25 * a[i];
        }
        try (Tensor ta = t(a, n); Tensor tb = t(b, n); Tensor out = cpu.empty(DType.F32, n)) {
            cpu.add(ta, tb, out);
            close(sum, out.toFloatArray(), ELEMENTWISE, 1e-3, "add");
            cpu.mul(ta, tb, out);
            close(prod, out.toFloatArray(), ELEMENTWISE, 1e-3, "mul");
            cpu.copy(tb, out);
            cpu.axpy(1.5f, ta, out);
            close(axpy, out.toFloatArray(), ELEMENTWISE, 1e-3, "axpy");
            cpu.copy(ta, out);
            cpu.scale(-0.25f, out);
            close(scaled, out.toFloatArray(), ELEMENTWISE, 1e-3, "scale");
            cpu.fill(out, 2.5f);
            for (float v : out.toFloatArray()) assertEquals(2.5f, v);
            assertThrows(IllegalArgumentException.class, () -> cpu.add(ta, out.narrow0(0, 5), out));
        }
    }

    @Test
    void argmaxAndCorrectCount() {
        int rows = 50, cols = 7;
        float[] x = randn(random, rows * cols);
        long[] labels = new long[rows], expectedArg = new long[rows];
        long expectedCorrect = 0;
        for (int r = 0; r < rows; r++) {
            int best = 0;
            for (int c = 1; c < cols; c++) if (x[r * cols + c] > x[r * cols + best]) best = c;
            expectedArg[r] = best;
            labels[r] = r % 9 == 0 ? -100 : (r % 2 == 0 ? best : (best + 1) % cols);
            if (labels[r] == best) expectedCorrect++;
        }
        try (Tensor tx = t(x, rows, cols); Tensor arg = cpu.empty(DType.I64, rows); Tensor ty = cpu.empty(DType.I64, rows).copyFrom(labels);
             Tensor count = cpu.zeros(DType.I64, 1)) {
            cpu.argmax(tx, arg);
            assertArrayEquals(expectedArg, arg.toLongArray());
            cpu.correctCount(tx, ty, -100, count);
            cpu.correctCount(tx, ty, -100, count);
            assertEquals(2 * expectedCorrect, count.toLongArray()[0]);
        }
    }

    // ---- dropout and init

    @Test
    void dropoutKeepsAboutOneMinusPScalesAndMatchesItsBackward() {
        int n = 200_000;
        float p = 0.3f;
        float[] x = randn(random, n);
        try (Tensor tx = t(x, n); Tensor y = cpu.empty(DType.F32, n); Tensor dx = cpu.empty(DType.F32, n)) {
            cpu.dropout(p, 1234, 77, tx, y);
            float[] out = y.toFloatArray();
            int kept = 0;
            for (int i = 0; i < n; i++) {
                if (out[i] != 0) {
                    kept++;
                    assertEquals(x[i] / (1 - p), out[i], 1e-6 * Math.abs(x[i]) + 1e-7);
                }
                assertEquals(org.distill4j.core.Philox.uniform(1234, 77 + i) >= p, out[i] != 0 || x[i] == 0);
            }
            assertEquals(1 - p, kept / (double) n, 0.005);
            cpu.dropoutBackward(p, 1234, 77, tx, dx);
            assertArrayEquals(out, dx.toFloatArray(), "backward mask equals forward mask");
            assertThrows(IllegalArgumentException.class, () -> cpu.dropout(1f, 1, 0, tx, y));
        }
    }

    @Test
    void kaimingUniformHasPyTorchsBoundAndIsDeterministic() {
        try (Tensor w = cpu.empty(DType.F32, 300, 200); Tensor w2 = cpu.empty(DType.F32, 300, 200); Tensor b = cpu.empty(DType.F32, 300)) {
            Init.linearOrConv(w, b, 200, 7);
            Init.linearOrConv(w2, null, 200, 7);
            float bound = (float) (1 / Math.sqrt(200));
            double sq = 0;
            for (float v : w.toFloatArray()) {
                assertTrue(Math.abs(v) <= bound);
                sq += v * v;
            }
            assertEquals(bound * bound / 3, sq / w.numel(), bound * bound / 3 * 0.02, "variance of U(-b, b) is b^2/3");
            assertArrayEquals(w.toFloatArray(), w2.toFloatArray());
            for (float v : b.toFloatArray()) assertTrue(Math.abs(v) <= bound);
        }
    }

    // ---- convolution

    private static double[] convReference(float[] x, float[] w, int n, int c, int h, int wd, int k, int r, int s, Conv2dParams p) {
        int oh = p.outH(h, r), ow = p.outW(wd, s);
        double[] y = new double[n * k * oh * ow];
        for (int b = 0; b < n; b++) for (int o = 0; o < k; o++) for (int i = 0; i < oh; i++) for (int j = 0; j < ow; j++) {
            double sum = 0;
            for (int ci = 0; ci < c; ci++) for (int u = 0; u < r; u++) for (int v = 0; v < s; v++) {
                int yy = i * p.strideH() - p.padH() + u, xx = j * p.strideW() - p.padW() + v;
                if (yy < 0 || yy >= h || xx < 0 || xx >= wd) continue;
                sum += (double) x[((b * c + ci) * h + yy) * wd + xx] * w[((o * c + ci) * r + u) * s + v];
            }
            y[((b * k + o) * oh + i) * ow + j] = sum;
        }
        return y;
    }

    @Test
    void conv2dForwardAndBothBackwards() {
        int[][] cases = {{2, 3, 9, 11, 4, 3, 3, 1, 1}, {1, 1, 5, 5, 1, 1, 1, 0, 1}, {3, 5, 8, 7, 6, 3, 2, 2, 2}, {1, 2, 4, 4, 3, 5, 5, 2, 1}};
        for (int[] q : cases) {
            int n = q[0], c = q[1], h = q[2], wd = q[3], k = q[4], r = q[5], s = q[6];
            Conv2dParams p = new Conv2dParams(q[7], q[7], q[8], q[8]);
            int oh = p.outH(h, r), ow = p.outW(wd, s);
            float[] x = randn(random, n * c * h * wd), w = randn(random, k * c * r * s), g = randn(random, n * k * oh * ow);
            float[] dxA, dwA;
            try (Tensor tx = t(x, n, c, h, wd); Tensor tw = t(w, k, c, r, s); Tensor ty = cpu.empty(DType.F32, n, k, oh, ow);
                 Tensor dy = t(g, n, k, oh, ow); Tensor dx = cpu.empty(DType.F32, n, c, h, wd); Tensor dw = cpu.empty(DType.F32, k, c, r, s)) {
                cpu.conv2d(tx, tw, p, ty);
                close(convReference(x, w, n, c, h, wd, k, r, s, p), ty.toFloatArray(), THROUGH_GEMM, Math.sqrt(c * r * s), "conv2d " + java.util.Arrays.toString(q));
                cpu.conv2dBackwardData(dy, tw, p, dx);
                cpu.conv2dBackwardFilter(tx, dy, p, dw, false);
                dxA = dx.toFloatArray();
                dwA = dw.toFloatArray();
                cpu.conv2dBackwardFilter(tx, dy, p, dw, true);
                float[] twice = dw.toFloatArray();
                for (int i = 0; i < twice.length; i++) assertEquals(2 * dwA[i], twice[i], 1e-4 * Math.max(1, Math.abs(twice[i])));
            }
            gradient(x, dxA, v -> dot(toFloat(convReference(v, w, n, c, h, wd, k, r, s, p)), g), 1e-2, 1e-3, "conv2d dx " + java.util.Arrays.toString(q));
            gradient(w, dwA, v -> dot(toFloat(convReference(x, v, n, c, h, wd, k, r, s, p)), g), 1e-2, 1e-3, "conv2d dw " + java.util.Arrays.toString(q));
        }
        // Large enough that im2col and col2im run on several threads (channels in parallel): the
        // forward against the reference, the data gradient against the adjoint identity
        // <conv(x), g> = <x, conv^T(g)>.
        int n = 2, c = 24, h = 32, wd = 32, k = 8, r = 3; // 24 channels x 9 x 256 outputs per image: above the parallel threshold
        Conv2dParams big = Conv2dParams.of(1, 2);
        int oh = big.outH(h, r), ow = big.outW(wd, r);
        float[] x = randn(random, n * c * h * wd), w = randn(random, k * c * r * r), g = randn(random, n * k * oh * ow);
        try (Tensor tx = t(x, n, c, h, wd); Tensor tw = t(w, k, c, r, r); Tensor ty = cpu.empty(DType.F32, n, k, oh, ow); Tensor dy = t(g, n, k, oh, ow);
             Tensor dx = cpu.empty(DType.F32, n, c, h, wd)) {
            cpu.conv2d(tx, tw, big, ty);
            close(convReference(x, w, n, c, h, wd, k, r, r, big), ty.toFloatArray(), THROUGH_GEMM, Math.sqrt(c * r * r), "conv2d, parallel im2col");
            cpu.conv2dBackwardData(dy, tw, big, dx);
            double lhs = dot(ty.toFloatArray(), g), rhs = dot(x, dx.toFloatArray());
            assertEquals(lhs, rhs, 1e-3 * Math.max(1, Math.abs(lhs)), "conv2d adjoint identity, parallel col2im");
        }
        try (Tensor bx = cpu.zeros(DType.F32, 1, 3, 5, 5); Tensor bw = cpu.zeros(DType.F32, 2, 4, 3, 3); Tensor by = cpu.zeros(DType.F32, 1, 2, 3, 3)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> cpu.conv2d(bx, bw, Conv2dParams.of(0, 1), by));
            assertTrue(e.getMessage().contains("conv2d") && e.getMessage().contains("[1, 3, 5, 5]") && e.getMessage().contains("[2, 4, 3, 3]"), e.getMessage());
        }
    }

    private static float[] toFloat(double[] d) {
        float[] f = new float[d.length];
        for (int i = 0; i < d.length; i++) f[i] = (float) d[i];
        return f;
    }

    // ---- pooling

    private static double[] poolReference(PoolMode mode, Pool2dParams p, float[] x, int planes, int h, int w) {
        int oh = p.outH(h), ow = p.outW(w);
        double[] y = new double[planes * oh * ow];
        for (int pl = 0; pl < planes; pl++) for (int i = 0; i < oh; i++) for (int j = 0; j < ow; j++) {
            double acc = mode == PoolMode.MAX ? Double.NEGATIVE_INFINITY : 0;
            for (int u = 0; u < p.kernelH(); u++) for (int v = 0; v < p.kernelW(); v++) {
                int yy = i * p.strideH() - p.padH() + u, xx = j * p.strideW() - p.padW() + v;
                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                double val = x[(pl * h + yy) * w + xx];
                acc = mode == PoolMode.MAX ? Math.max(acc, val) : acc + val;
            }
            y[(pl * oh + i) * ow + j] = mode == PoolMode.MAX ? acc : acc / (p.kernelH() * p.kernelW());
        }
        return y;
    }

    @ParameterizedTest
    @EnumSource(PoolMode.class)
    void pooling(PoolMode mode) {
        for (Pool2dParams p : List.of(Pool2dParams.of(2, 2, 0), Pool2dParams.of(3, 2, 1), Pool2dParams.of(3, 1, 1))) {
            int n = 2, c = 3, h = 7, w = 9;
            float[] x = randn(random, n * c * h * w);
            if (mode == PoolMode.MAX) {
                // Distinct values 0.01 apart in random order: the finite-difference step (1e-3) can
                // never change which element of a window is the maximum.
                java.util.List<Integer> order = new java.util.ArrayList<>();
                for (int i = 0; i < x.length; i++) order.add(i);
                java.util.Collections.shuffle(order, random);
                for (int i = 0; i < x.length; i++) x[i] = (order.get(i) - x.length / 2) * 0.01f;
            }
            int oh = p.outH(h), ow = p.outW(w);
            float[] g = randn(random, n * c * oh * ow);
            float[] dxA;
            try (Tensor tx = t(x, n, c, h, w); Tensor ty = cpu.empty(DType.F32, n, c, oh, ow); Tensor dy = t(g, n, c, oh, ow);
                 Tensor dx = cpu.empty(DType.F32, n, c, h, w)) {
                cpu.pool2d(mode, p, tx, ty);
                close(poolReference(mode, p, x, n * c, h, w), ty.toFloatArray(), ELEMENTWISE, 1, mode + " pool " + p);
                cpu.pool2dBackward(mode, p, tx, ty, dy, dx);
                dxA = dx.toFloatArray();
            }
            gradient(x, dxA, v -> dot(toFloat(poolReference(mode, p, v, n * c, h, w)), g), 1e-3, 1e-3, mode + " pool backward " + p);
        }
    }

    @Test
    void globalAveragePooling() {
        int n = 3, c = 4, h = 5, w = 7;
        float[] x = randn(random, n * c * h * w), g = randn(random, n * c);
        double[] expected = new double[n * c];
        for (int pl = 0; pl < n * c; pl++) {
            for (int i = 0; i < h * w; i++) expected[pl] += x[pl * h * w + i];
            expected[pl] /= h * w;
        }
        try (Tensor tx = t(x, n, c, h, w); Tensor ty = cpu.empty(DType.F32, n, c, 1, 1); Tensor dy = t(g, n, c, 1, 1); Tensor dx = cpu.empty(DType.F32, n, c, h, w)) {
            cpu.globalAvgPool(tx, ty);
            close(expected, ty.toFloatArray(), ELEMENTWISE, 1, "globalAvgPool");
            cpu.globalAvgPoolBackward(dy, dx);
            float[] d = dx.toFloatArray();
            for (int i = 0; i < d.length; i++) assertEquals(g[i / (h * w)] / (h * w), d[i], 1e-6);
        }
    }

    // ---- batch normalization

    private static double[] bnReference(float[] x, float[] gamma, float[] beta, int n, int c, int inner, double eps) {
        double[] y = new double[x.length];
        for (int ch = 0; ch < c; ch++) {
            double mean = 0, var = 0;
            for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) mean += x[(b * c + ch) * inner + i];
            mean /= n * inner;
            for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) var += Math.pow(x[(b * c + ch) * inner + i] - mean, 2);
            var /= n * inner;
            for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) {
                int at = (b * c + ch) * inner + i;
                y[at] = (x[at] - mean) / Math.sqrt(var + eps) * gamma[ch] + beta[ch];
            }
        }
        return y;
    }

    @Test
    void batchNormTrainEvalAndBackward() {
        // The last shape sits at 1000 + N(0, 1): the one-pass statistics (shifted sums) must keep the variance's precision there.
        for (long[] shape : new long[][] {{8, 5}, {4, 3, 5, 6}, {3, 2, 7, 9}}) {
            int n = (int) shape[0], c = (int) shape[1], inner = (int) (org.distill4j.core.Tensor.numel(shape) / n / c);
            float[] x = randn(random, n * c * inner), gamma = randn(random, c), beta = randn(random, c), g = randn(random, x.length);
            if (shape[0] == 3) for (int i = 0; i < x.length; i++) x[i] += 1000;
            float[] rm0 = randn(random, c), rv0 = new float[c];
            for (int i = 0; i < c; i++) rv0[i] = 0.5f + random.nextFloat();
            float eps = 1e-5f, momentum = 0.1f;
            float[] dxA, dgA, dbA;
            try (Tensor tx = t(x, shape); Tensor tg = t(gamma, c); Tensor tb = t(beta, c); Tensor rm = t(rm0, c); Tensor rv = t(rv0, c);
                 Tensor y = cpu.empty(DType.F32, shape); Tensor sm = cpu.empty(DType.F32, c); Tensor si = cpu.empty(DType.F32, c);
                 Tensor dy = t(g, shape); Tensor dx = cpu.empty(DType.F32, shape); Tensor dg = cpu.empty(DType.F32, c); Tensor db = cpu.empty(DType.F32, c)) {
                cpu.batchNormTrain(tx, tg, tb, rm, rv, momentum, eps, y, sm, si);
                close(bnReference(x, gamma, beta, n, c, inner, eps), y.toFloatArray(), ELEMENTWISE, 1, "batchNormTrain " + java.util.Arrays.toString(shape));
                double[] em = new double[c], ev = new double[c];
                int m = n * inner;
                for (int ch = 0; ch < c; ch++) {
                    double mean = 0, var = 0;
                    for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) mean += x[(b * c + ch) * inner + i];
                    mean /= m;
                    for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) var += Math.pow(x[(b * c + ch) * inner + i] - mean, 2);
                    em[ch] = 0.9 * rm0[ch] + 0.1 * mean;
                    ev[ch] = 0.9 * rv0[ch] + 0.1 * var / (m - 1);
                }
                close(em, rm.toFloatArray(), ELEMENTWISE, 1, "running mean");
                close(ev, rv.toFloatArray(), ELEMENTWISE, 1, "running var (unbiased)");
                cpu.batchNormBackward(tx, dy, tg, sm, si, dx, dg, db);
                dxA = dx.toFloatArray();
                dgA = dg.toFloatArray();
                dbA = db.toFloatArray();
                // Eval uses the running statistics.
                cpu.batchNormEval(tx, tg, tb, rm, rv, eps, y);
                float[] rmv = rm.toFloatArray(), rvv = rv.toFloatArray();
                double[] evalRef = new double[x.length];
                for (int i = 0; i < x.length; i++) {
                    int ch = (i / inner) % c;
                    evalRef[i] = (x[i] - rmv[ch]) / Math.sqrt(rvv[ch] + eps) * gamma[ch] + beta[ch];
                }
                close(evalRef, y.toFloatArray(), ELEMENTWISE, 1, "batchNormEval");
            }
            gradient(x, dxA, v -> dot(toFloat(bnReference(v, gamma, beta, n, c, inner, eps)), g), 1e-2, 2e-3, "batchNorm dx");
            gradient(gamma, dgA, v -> dot(toFloat(bnReference(x, v, beta, n, c, inner, eps)), g), 1e-2, 2e-3, "batchNorm dgamma");
            gradient(beta, dbA, v -> dot(toFloat(bnReference(x, gamma, v, n, c, inner, eps)), g), 1e-2, 2e-3, "batchNorm dbeta");
        }
    }

    // ---- optimizers

    @Test
    void sgdWithMomentumNesterovAndWeightDecayMatchesPyTorchsRecurrence() {
        for (boolean nesterov : new boolean[] {false, true}) {
            Optimizers.Sgd cfg = new Optimizers.Sgd(0.1f, 0.9f, 0f, nesterov, 0.01f);
            int n = 1001;
            float[] p0 = randn(random, n);
            double[] p = new double[n], buf = new double[n];
            for (int i = 0; i < n; i++) p[i] = p0[i];
            try (Tensor tp = t(p0, n); Tensor tg = cpu.empty(DType.F32, n); Tensor tm = cpu.zeros(DType.F32, n)) {
                for (int step = 1; step <= 3; step++) {
                    float[] g = randn(random, n);
                    tg.copyFrom(g);
                    cpu.sgdStep(cfg, step, List.of(tp), List.of(tg), List.of(tm));
                    for (int i = 0; i < n; i++) {
                        double d = g[i] + 0.01 * p[i];
                        buf[i] = step == 1 ? d : 0.9 * buf[i] + d;
                        p[i] -= 0.1 * (nesterov ? d + 0.9 * buf[i] : buf[i]);
                    }
                }
                close(p, tp.toFloatArray(), 1e-5, 1, "sgd nesterov=" + nesterov);
            }
        }
    }

    @Test
    void adamwMatchesPyTorchsRecurrence() {
        Optimizers.AdamW cfg = new Optimizers.AdamW(1e-2f, 0.9f, 0.999f, 1e-8f, 0.05f);
        int n = 777;
        float[] p0 = randn(random, n);
        double[] p = new double[n], m = new double[n], v = new double[n];
        for (int i = 0; i < n; i++) p[i] = p0[i];
        try (Tensor tp = t(p0, n); Tensor tg = cpu.empty(DType.F32, n); Tensor tm = cpu.zeros(DType.F32, n); Tensor tv = cpu.zeros(DType.F32, n)) {
            for (int step = 1; step <= 4; step++) {
                float[] g = randn(random, n);
                tg.copyFrom(g);
                cpu.adamwStep(cfg, step, List.of(tp), List.of(tg), List.of(tm), List.of(tv));
                for (int i = 0; i < n; i++) {
                    p[i] *= 1 - 1e-2 * 0.05;
                    m[i] = 0.9 * m[i] + 0.1 * g[i];
                    v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                    p[i] -= 1e-2 * (m[i] / (1 - Math.pow(0.9, step))) / (Math.sqrt(v[i] / (1 - Math.pow(0.999, step))) + 1e-8);
                }
            }
            close(p, tp.toFloatArray(), 1e-5, 1, "adamw");
        }
    }

    // ---- checks and misuse

    @Test
    void nonFiniteValuesAreFound() {
        try (Tensor a = cpu.zeros(DType.F32, 10); Tensor b = cpu.zeros(DType.F32, 3)) {
            assertFalse(cpu.hasNonFinite(a, b));
            b.copyFrom(new float[] {0, Float.POSITIVE_INFINITY, 1});
            assertTrue(cpu.hasNonFinite(a, b));
            b.copyFrom(new float[] {Float.NaN, 0, 1});
            assertTrue(cpu.hasNonFinite(b));
        }
    }

    @Test
    void opsOnAClosedTensorThrowIllegalState() {
        Tensor x = cpu.zeros(DType.F32, 4, 4);
        Tensor y = cpu.zeros(DType.F32, 4, 4);
        Tensor view = x.view(16);
        x.close();
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> cpu.activation(Activation.RELU, 0, x, y));
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
        assertThrows(IllegalStateException.class, view::toFloatArray);
        assertThrows(IllegalStateException.class, () -> cpu.copy(y, x));
        y.close();
    }

    @Test
    void dtypeMismatchNamesTheOp() {
        try (Tensor x = cpu.zeros(DType.I64, 4); Tensor y = cpu.zeros(DType.F32, 4)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> cpu.softmax(x, y));
            assertTrue(e.getMessage().startsWith("softmax:") && e.getMessage().contains("I64"), e.getMessage());
        }
    }
}
