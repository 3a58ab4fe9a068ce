package org.distill4j.core.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.Random;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.infer.Predictor;
import org.junit.jupiter.api.Test;

/**
 * The bf16 inference plan (issue 23: a frozen model-spec teacher and a bf16 Predictor) against the
 * recipe written out in Java from the definition: every matrix product and convolution takes its
 * weights and its input rounded to bf16 (nearest even), products summed in float64 here (float32
 * in the plan: rounding only), biases and activations in float32. An MLP (linear, relu, linear)
 * through the Predictor and a convolution through the plan, on whichever CPU engine this process
 * runs (oneDNN's bf16 kernels by default; -Ddistill4j.cpu.engine=java runs the Java loop). Seeded:
 * -Ddistill4j.test.seed=N replays a run.
 */
class InferencePlanBf16Test {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    private static final String MLP = "{\"input\": [37], \"layers\": [{\"type\": \"linear\", \"in\": 37, \"out\": 64}, {\"type\": \"relu\"},"
        + "{\"type\": \"linear\", \"in\": 64, \"out\": 5}]}";
    private static final String CONV = "{\"input\": [3, 9, 9], \"layers\": [{\"type\": \"conv2d\", \"in\": 3, \"out\": 4, \"kernel\": 3, \"stride\": 2,"
        + " \"padding\": 1}, {\"type\": \"flatten\"}]}";

    private static float[] gaussian(Random r, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) r.nextGaussian();
        return v;
    }

    private static double bf16(double v) {
        return Bf16.toFloat(Bf16.fromFloat((float) v));
    }

    private static float[] param(Model m, String name) {
        for (Parameter p : m.parameters()) if (p.name().equals(name)) return p.value().toFloatArray();
        throw new AssertionError("no parameter " + name + " in " + m.parameters().stream().map(Parameter::name).toList());
    }

    private static float[] forward(Model m, float[] x, long... shape) {
        try (Arena a = Arena.ofShared(); Tensor t = CpuBackend.get().fromArray(x, shape)) {
            return m.forward(new Layer.Pass(CpuBackend.get(), a, false, 0, 0), t).toFloatArray();
        }
    }

    /**
     * The MLP's logits against the recipe. The plan's hidden layer is a float32 sum, so where the
     * float64 hidden value lies within that rounding of a bf16 rounding boundary the plan may round
     * it the other way: such a hidden unit widens the output's tolerance by |bf16(W2)| times the
     * gap between the two bf16 candidates (nothing else does).
     */
    @Test
    void mlpThroughABf16PredictorFollowsTheRecipe() {
        System.out.println("InferencePlanBf16Test.mlpThroughABf16PredictorFollowsTheRecipe seed " + seed + " (" + CpuBlas.provider() + ")");
        Random r = new Random(seed);
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), seed)) {
            float[] w1 = param(m, "0.weight"), b1 = param(m, "0.bias"), w2 = param(m, "2.weight"), b2 = param(m, "2.bias");
            try (Predictor p = Predictor.of(m, new Predictor.Options(16, false, 0).withComputeDtype(DType.BF16))) {
                for (int rows : new int[] {1, 7, 16, 23}) {
                    float[] x = gaussian(r, rows * 37);
                    float[] got = p.predict(x);
                    float[] f32 = forward(m, x, rows, 37);
                    double worstF32 = 0;
                    for (int i = 0; i < rows; i++) {
                        double[] h = new double[64], gap = new double[64];
                        for (int j = 0; j < 64; j++) {
                            double s = b1[j], mag = Math.abs(b1[j]);
                            for (int q = 0; q < 37; q++) {
                                double t = bf16(x[i * 37 + q]) * bf16(w1[j * 37 + q]);
                                s += t;
                                mag += Math.abs(t);
                            }
                            double tol = 1e-5 * mag + 1e-6;
                            h[j] = bf16(Math.max(0f, (float) s));
                            gap[j] = Math.abs(bf16(Math.max(0, s + tol)) - bf16(Math.max(0, s - tol)));
                        }
                        for (int c = 0; c < 5; c++) {
                            double y = b2[c], mag = Math.abs(b2[c]), ambiguous = 0;
                            for (int j = 0; j < 64; j++) {
                                double t = h[j] * bf16(w2[c * 64 + j]);
                                y += t;
                                mag += Math.abs(t);
                                ambiguous += gap[j] * Math.abs(bf16(w2[c * 64 + j]));
                            }
                            double tolerance = 1e-5 * mag + 1e-6 + ambiguous;
                            float g = got[i * 5 + c];
                            assertTrue(Math.abs(g - y) <= tolerance, "seed " + seed + ", rows " + rows + ": logit [" + i + "," + c + "] = " + g
                                + ", the bf16 recipe says " + y + " (tolerance " + tolerance + ")");
                            worstF32 = Math.max(worstF32, Math.abs(f32[i * 5 + c] - y) / tolerance);
                        }
                    }
                    // The float32 forward is outside the tolerance somewhere: the check tells bf16 from float32.
                    assertTrue(worstF32 > 1, "seed " + seed + ", rows " + rows + ": float32 logits are within the bf16 tolerance everywhere");
                    assertFalse(Arrays.equals(got, f32), "bf16 logits equal float32's");
                }
            }
        }
    }

    /** A convolution (stride 2, padding 1, bias) in the bf16 plan against the direct convolution of bf16 inputs and weights, summed in float64. */
    @Test
    void convolutionFollowsTheRecipe() {
        System.out.println("InferencePlanBf16Test.convolutionFollowsTheRecipe seed " + seed);
        Random r = new Random(seed);
        try (Model m = ModelSpec.parse("conv", CONV).build(CpuBackend.get(), seed)) {
            float[] w = param(m, "0.weight"), b = param(m, "0.bias");
            int c = 3, h = 9, wd = 9, k = 4, ks = 3, stride = 2, pad = 1, oh = 5, ow = 5;
            assertArrayEquals(new long[] {k * oh * ow}, m.outputShape());
            InferencePlan plan = InferencePlan.compile(m, 8, true, DType.BF16);
            try (InferencePlan.Workspace ws = plan.newWorkspace()) {
                assertEquals(DType.BF16, plan.computeDtype());
                for (int rows : new int[] {1, 8, 3}) {
                    float[] x = gaussian(r, rows * c * h * wd);
                    MemorySegment.copy(x, 0, ws.input(), ValueLayout.JAVA_FLOAT, 0, x.length);
                    ws.run(rows);
                    float[] got = ws.output().asSlice(0, (long) rows * k * oh * ow * Float.BYTES).toArray(ValueLayout.JAVA_FLOAT);
                    float[] f32 = forward(m, x, rows, c, h, wd);
                    double worstF32 = 0;
                    for (int n = 0; n < rows; n++) {
                        for (int o = 0; o < k; o++) {
                            for (int y = 0; y < oh; y++) {
                                for (int xo = 0; xo < ow; xo++) {
                                    double s = b[o], mag = Math.abs(b[o]);
                                    for (int ci = 0; ci < c; ci++) {
                                        for (int u = 0; u < ks; u++) {
                                            for (int v = 0; v < ks; v++) {
                                                int iy = y * stride + u - pad, ix = xo * stride + v - pad;
                                                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                                double t = bf16(x[((n * c + ci) * h + iy) * wd + ix]) * bf16(w[((o * c + ci) * ks + u) * ks + v]);
                                                s += t;
                                                mag += Math.abs(t);
                                            }
                                        }
                                    }
                                    int at = ((n * k + o) * oh + y) * ow + xo;
                                    double tolerance = 1e-5 * mag + 1e-6;
                                    assertTrue(Math.abs(got[at] - s) <= tolerance, "seed " + seed + ", rows " + rows + ": y[" + n + "," + o + "," + y + "," + xo
                                        + "] = " + got[at] + ", the bf16 recipe says " + s);
                                    worstF32 = Math.max(worstF32, Math.abs(f32[at] - s) / tolerance);
                                }
                            }
                        }
                    }
                    assertTrue(worstF32 > 1, "seed " + seed + ", rows " + rows + ": float32 outputs are within the bf16 tolerance everywhere");
                }
            } finally {
                plan.close();
            }
        }
    }

    @Test
    void onlyF32AndBf16() {
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), 1)) {
            var e = assertThrows(IllegalArgumentException.class, () -> InferencePlan.compile(m, 4, true, DType.F16));
            assertTrue(e.getMessage().contains("F32 or BF16"), e.getMessage());
            var o = assertThrows(IllegalArgumentException.class, () -> Predictor.Options.defaults().withComputeDtype(DType.I64));
            assertTrue(o.getMessage().contains("F32 or BF16"), o.getMessage());
        }
    }
}
