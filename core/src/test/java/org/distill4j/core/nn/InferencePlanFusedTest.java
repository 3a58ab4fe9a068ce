package org.distill4j.core.nn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cpu.OnednnInferenceConv;
import org.junit.jupiter.api.Test;

/**
 * The fused convolutions of the inference plan on the oneDNN engine ({@link OnednnInferenceConv}:
 * eval batch norm folded into the weights, ReLU and the residual add as post-ops, channel-blocked
 * activations between them) against {@code Model.forward}, which runs each layer on its own: equal
 * within float32 rounding (folding the batch norm rounds differently), for 1 to maxBatch rows. The
 * specs cover a blocked chain with identity and convolution shortcuts (the kd-step teacher), and
 * the cases that do not fuse or fuse only in part: channels that are not a multiple of 16 (plain
 * output), a residual whose shortcut is plain while its body is blocked, layers that need NCHW
 * after a blocked one (pooling, flatten, a non-ReLU activation), a convolution with its own bias,
 * and a batch norm that follows something other than a convolution. Batch norms get random running
 * statistics, so a fold that mixed up channels would fail. On the other engines nothing fuses and
 * the plan equals Model.forward bit for bit (asserted too). Seeded: -Ddistill4j.test.seed=N.
 */
class InferencePlanFusedTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    private static final String TEACHER = "bench/specs/cnn-teacher.json";

    /** Mixed: a plain 8-channel start, a blocked residual with a plain identity shortcut, pooling, gelu, a biased conv, flatten. */
    private static final String MIXED = """
        {"input": [3, 10, 10], "layers": [
          {"type": "conv2d", "in": 3, "out": 8, "kernel": 3, "padding": 1}, {"type": "batchnorm2d", "features": 8}, {"type": "relu"},
          {"type": "conv2d", "in": 8, "out": 16, "kernel": 3, "padding": 1, "bias": false}, {"type": "batchnorm2d", "features": 16},
          {"type": "residual", "body": [{"type": "conv2d", "in": 16, "out": 16, "kernel": 3, "padding": 1}, {"type": "relu"},
                                        {"type": "conv2d", "in": 16, "out": 16, "kernel": 1}, {"type": "batchnorm2d", "features": 16}]},
          {"type": "relu"},
          {"type": "maxpool2d", "kernel": 2},
          {"type": "conv2d", "in": 16, "out": 32, "kernel": 3, "padding": 1}, {"type": "gelu"},
          {"type": "residual", "body": [{"type": "conv2d", "in": 32, "out": 32, "kernel": 3, "padding": 1, "bias": false},
                                        {"type": "batchnorm2d", "features": 32}],
                               "shortcut": [{"type": "conv2d", "in": 32, "out": 32, "kernel": 1, "bias": false}]},
          {"type": "gelu"},
          {"type": "residual", "body": [{"type": "conv2d", "in": 32, "out": 32, "kernel": 3, "padding": 1}, {"type": "relu"}]},
          {"type": "batchnorm2d", "features": 32}, {"type": "relu"},
          {"type": "adaptiveavgpool2d"}, {"type": "flatten"}, {"type": "linear", "in": 32, "out": 7}]}
        """;

    private static Path repoFile(String relative) {
        Path p = Path.of("").toAbsolutePath();
        while (p != null && !Files.exists(p.resolve(relative))) p = p.getParent();
        if (p == null) throw new AssertionError("no " + relative + " above " + Path.of("").toAbsolutePath());
        return p.resolve(relative);
    }

    /** Random weights (the model's seeded init) and random batch-norm statistics, gamma and beta. */
    private static void randomizeBatchNorms(Model m, Random r) {
        for (Parameter p : m.parameters()) {
            String name = p.name();
            MemorySegment d = p.value().data();
            long n = p.value().numel();
            if (name.endsWith("running_mean") || name.endsWith(".bias") && isNorm(m, name)) {
                for (long i = 0; i < n; i++) d.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) (r.nextGaussian() * 0.3));
            } else if (name.endsWith("running_var")) {
                for (long i = 0; i < n; i++) d.setAtIndex(ValueLayout.JAVA_FLOAT, i, 0.2f + 2 * r.nextFloat());
            } else if (name.endsWith(".weight") && isNorm(m, name)) {
                for (long i = 0; i < n; i++) d.setAtIndex(ValueLayout.JAVA_FLOAT, i, 0.5f + r.nextFloat());
            }
        }
    }

    private static boolean isNorm(Model m, String name) {
        String prefix = name.substring(0, name.lastIndexOf('.'));
        return m.parameters().stream().anyMatch(q -> q.name().equals(prefix + ".running_var"));
    }

    private static float[] forward(Model m, float[] x, long... shape) {
        try (Arena a = Arena.ofShared(); Tensor t = CpuBackend.get().fromArray(x, shape)) {
            return m.forward(new Layer.Pass(CpuBackend.get(), a, false, 0, 0), t).toFloatArray();
        }
    }

    private void check(String name, Model m, int maxBatch) {
        Random r = new Random(seed);
        randomizeBatchNorms(m, r);
        long in = Tensor.numel(m.inputShape());
        long[] shape = m.inputShape();
        InferencePlan plan = InferencePlan.compile(m, maxBatch, true);
        try (InferencePlan.Workspace ws = plan.newWorkspace()) {
            for (int rows : new int[] {1, 3, maxBatch}) {
                float[] x = new float[(int) (rows * in)];
                for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
                long[] full = new long[shape.length + 1];
                full[0] = rows;
                System.arraycopy(shape, 0, full, 1, shape.length);
                float[] expected = forward(m, x, full);
                MemorySegment.copy(x, 0, ws.input(), ValueLayout.JAVA_FLOAT, 0, x.length);
                ws.run(rows);
                float[] got = ws.output().asSlice(0, (long) expected.length * Float.BYTES).toArray(ValueLayout.JAVA_FLOAT);
                double scale = 0, worst = 0;
                for (float v : expected) scale = Math.max(scale, Math.abs(v));
                for (int i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - expected[i]));
                String what = name + ", rows " + rows + ", seed " + seed;
                if (OnednnInferenceConv.enabled()) {
                    assertTrue(worst <= 1e-5 * Math.max(1, scale), what + ": max |plan - forward| " + worst + " over max |forward| " + scale);
                } else {
                    assertEquals(0.0, worst, what + ": nothing fuses on this engine, so the plan must equal Model.forward bit for bit");
                }
            }
        } finally {
            plan.close();
        }
    }

    @Test
    void theKdStepTeacherFusesWholeAndMatchesForward() throws Exception {
        try (Model m = ModelSpec.read(repoFile(TEACHER)).build(CpuBackend.get(), seed)) {
            check("cnn-teacher", m, 8);
        }
        if (OnednnInferenceConv.enabled()) {
            // Every convolution of the teacher fused (3 -> 32 reads NCHW, the rest blocked), with oneDNN's own kernel, none declined.
            var impls = OnednnInferenceConv.implementations();
            assertTrue(impls.stream().anyMatch(s -> s.contains("[31, 8, 3, 32, 32, 32,")), impls.toString());
            assertTrue(impls.stream().noneMatch(s -> s.contains("declined")), impls.toString());
        }
    }

    @Test
    void partlyFusedModelsMatchForward() {
        try (Model m = ModelSpec.parse("mixed", MIXED).build(CpuBackend.get(), seed)) {
            check("mixed", m, 5);
        }
    }

    /**
     * A Linear followed by ReLU compiles to one packed matmul with ReLU as its post-op where the
     * weights are packed (one step fewer per pair than with -Ddistill4j.onednn.fuse=false), and
     * gives Model.forward's bits on both of its paths (the packed kernel at 32 rows, the plain gemm
     * at 1 and 3), NaN inputs included: ReLU maps NaN and negative values to +0 in both.
     */
    @Test
    void linearThenReluFusesAndMatchesForwardBitForBit() {
        String mlp = """
            {"input": [200], "layers": [
              {"type": "linear", "in": 200, "out": 300}, {"type": "relu"},
              {"type": "linear", "in": 300, "out": 300}, {"type": "relu"},
              {"type": "linear", "in": 300, "out": 5}]}
            """;
        Random r = new Random(seed);
        try (Model m = ModelSpec.parse("mlp", mlp).build(CpuBackend.get(), seed)) {
            InferencePlan fused = InferencePlan.compile(m, 32, true);
            String was = System.getProperty("distill4j.onednn.fuse");
            System.setProperty("distill4j.onednn.fuse", "false");
            InferencePlan unfused;
            try {
                unfused = InferencePlan.compile(m, 32, true);
            } finally {
                if (was == null) System.clearProperty("distill4j.onednn.fuse");
                else System.setProperty("distill4j.onednn.fuse", was);
            }
            try (InferencePlan.Workspace ws = fused.newWorkspace()) {
                if (org.distill4j.core.cpu.OnednnPackedMatmul.pays(300, 200, 32)) {
                    assertEquals(unfused.stepCount() - 2, fused.stepCount(), "each Linear + ReLU pair is one step");
                } else {
                    assertEquals(unfused.stepCount(), fused.stepCount(), "nothing packs on this engine, so nothing fuses");
                }
                for (int rows : new int[] {1, 3, 32}) {
                    float[] x = new float[rows * 200];
                    for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
                    x[7] = Float.NaN; // row 0: its first layer's outputs are all NaN, which ReLU maps to +0
                    float[] expected = forward(m, x, rows, 200);
                    MemorySegment.copy(x, 0, ws.input(), ValueLayout.JAVA_FLOAT, 0, x.length);
                    ws.run(rows);
                    float[] got = ws.output().asSlice(0, (long) expected.length * Float.BYTES).toArray(ValueLayout.JAVA_FLOAT);
                    org.junit.jupiter.api.Assertions.assertArrayEquals(expected, got, "rows " + rows + ", seed " + seed);
                }
            } finally {
                fused.close();
                unfused.close();
            }
        }
    }

    /** Runs plans of {@code m} for {@code rows} rows of x: the outputs. */
    private static float[] runPlan(Model m, int maxBatch, org.distill4j.core.DType dtype, float[] x, int rows) {
        InferencePlan plan = InferencePlan.compile(m, maxBatch, true, dtype);
        try (InferencePlan.Workspace ws = plan.newWorkspace()) {
            MemorySegment.copy(x, 0, ws.input(), ValueLayout.JAVA_FLOAT, 0, x.length);
            ws.run(rows);
            return ws.output().asSlice(0, rows * plan.outputSize() * Float.BYTES).toArray(ValueLayout.JAVA_FLOAT);
        } finally {
            plan.close();
        }
    }

    private static double maxAbsDiff(float[] a, float[] b) {
        double worst = 0;
        for (int i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
        return worst;
    }

    /**
     * -Ddistill4j.onednn.fuse=false compiles the convolutions unfused: bit for bit Model.forward.
     * And the bf16 plan fused (bf16 x and W, the batch norm as float32 post-ops) against the bf16
     * plan unfused (the recipe, step by step; InferencePlanBf16Test holds it to the recipe written
     * out in Java): both sit at bf16's distance from the float32 forward, the fused one no farther
     * than twice the unfused one's (a wrong scale, shift, addend or layout would be far off), on the
     * teacher and on the mixed spec.
     */
    @Test
    void unfusedPlansAndTheBf16RecipeFused() throws Exception {
        if (!OnednnInferenceConv.enabled()) return; // nothing fuses on this engine (check() asserts bit for bit there)
        for (String name : new String[] {"cnn-teacher", "mixed"}) {
            try (Model m = name.equals("mixed") ? ModelSpec.parse("mixed", MIXED).build(CpuBackend.get(), seed)
                : ModelSpec.read(repoFile(TEACHER)).build(CpuBackend.get(), seed)) {
                Random r = new Random(seed + 1);
                randomizeBatchNorms(m, r);
                int rows = 4;
                long in = Tensor.numel(m.inputShape());
                float[] x = new float[(int) (rows * in)];
                for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
                long[] full = new long[m.inputShape().length + 1];
                full[0] = rows;
                System.arraycopy(m.inputShape(), 0, full, 1, m.inputShape().length);
                float[] forward = forward(m, x, full);
                float[] fusedBf16 = runPlan(m, rows, org.distill4j.core.DType.BF16, x, rows);
                float[] unfused, unfusedBf16;
                System.setProperty("distill4j.onednn.fuse", "false");
                try {
                    unfused = runPlan(m, rows, org.distill4j.core.DType.F32, x, rows);
                    unfusedBf16 = runPlan(m, rows, org.distill4j.core.DType.BF16, x, rows);
                } finally {
                    System.clearProperty("distill4j.onednn.fuse");
                }
                assertEquals(0.0, maxAbsDiff(unfused, forward), name + ": the unfused float32 plan is Model.forward bit for bit");
                double scale = 0;
                for (float v : forward) scale = Math.max(scale, Math.abs(v));
                double fusedErr = maxAbsDiff(fusedBf16, forward), recipeErr = maxAbsDiff(unfusedBf16, forward);
                String what = name + ", seed " + seed + ": bf16 fused " + fusedErr + ", bf16 unfused " + recipeErr + ", max |forward| " + scale;
                System.out.println("InferencePlanFusedTest: " + what);
                assertTrue(recipeErr > 0 && recipeErr < 0.05 * Math.max(1, scale), what);
                assertTrue(fusedErr <= 2 * recipeErr + 1e-6 * scale, what);
            }
        }
        if (org.distill4j.core.cpu.CpuBlas.hasFastBf16()) {
            var impls = OnednnInferenceConv.implementations();
            // bf16 convolutions of the teacher fused (key[19] = 1), none declined.
            assertTrue(impls.stream().anyMatch(s -> s.matches("\\[31, 4, 32, 32, 32, .*, 1, [01]\\] -> .*bf16.*")), impls.toString());
            assertTrue(impls.stream().noneMatch(s -> s.contains("declined")), impls.toString());
        }
    }

    /**
     * The bf16 convolution's input rounding (a oneDNN reorder) is the recipe's, Bf16.fromFloat
     * (nearest even), bit for bit: random values, exact ties (both directions), the largest finite
     * values, infinities and zeros of both signs (NaN only as NaN), plain and blocked; except that
     * it flushes subnormal floats to a zero of their sign, which changes no product: the bf16
     * dot-product instructions (AVX512-BF16 vdpbf16ps) take subnormal bf16 inputs as zero anyway.
     */
    @Test
    void bf16InputRoundingIsNearestEven() {
        if (!OnednnInferenceConv.enabled()) return;
        Random r = new Random(seed);
        int rows = 3, c = 16, h = 5, w = 7, n = rows * c * h * w;
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = switch (i % 9) {
                case 0 -> Float.intBitsToFloat((r.nextInt() & 0xFFFF0000) | 0x8000);          // a tie: to even
                case 1 -> Float.intBitsToFloat(r.nextInt(0x00800000) | (r.nextBoolean() ? 0x80000000 : 0)); // subnormal
                case 2 -> new float[] {Float.MAX_VALUE, -Float.MAX_VALUE, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, 0f, -0f, Float.NaN}[r.nextInt(7)];
                default -> (float) (r.nextGaussian() * Math.pow(10, r.nextInt(7) - 3));
            };
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment f32 = a.allocateFrom(ValueLayout.JAVA_FLOAT, x), got = a.allocate((long) n * 2), want = a.allocate((long) n * 2);
            org.distill4j.core.cpu.CpuKernels.toBf16(f32, want, n);
            for (boolean blocked : new boolean[] {false, true}) {
                OnednnInferenceConv.toBf16(f32, got, rows, c, h, w, blocked); // the same layout both sides: element i to element i
                for (int i = 0; i < n; i++) {
                    short g = got.getAtIndex(ValueLayout.JAVA_SHORT, i), e = want.getAtIndex(ValueLayout.JAVA_SHORT, i);
                    boolean subnormal = x[i] != 0 && Math.abs(x[i]) < Float.MIN_NORMAL;
                    if (Float.isNaN(x[i])) assertTrue(Float.isNaN(org.distill4j.core.Bf16.toFloat(g)), "NaN stays NaN");
                    else if (subnormal) assertEquals(x[i] < 0 ? (short) 0x8000 : 0, g, "a subnormal flushes to a zero of its sign: " + x[i]);
                    else assertEquals(e, g, (blocked ? "blocked" : "plain") + ": " + x[i] + " (0x" + Integer.toHexString(Float.floatToRawIntBits(x[i])) + ")");
                }
            }
        }
    }

    /** The fold of an eval batch norm into a convolution's weights and bias, against the definition. */
    @Test
    void foldingABatchNormIsTheDefinition() {
        Random r = new Random(seed);
        int k = 3;
        long crs = 4;
        try (Arena a = Arena.ofConfined()) {
            float[] w = new float[(int) (k * crs)], b = new float[k], g = new float[k], beta = new float[k], mean = new float[k], var = new float[k];
            for (int i = 0; i < w.length; i++) w[i] = (float) r.nextGaussian();
            for (int i = 0; i < k; i++) {
                b[i] = (float) r.nextGaussian();
                g[i] = 0.5f + r.nextFloat();
                beta[i] = (float) r.nextGaussian();
                mean[i] = (float) r.nextGaussian();
                var[i] = 0.1f + r.nextFloat();
            }
            float eps = 1e-3f;
            float[][] f = OnednnInferenceConv.foldBatchNorm(a.allocateFrom(ValueLayout.JAVA_FLOAT, w), a.allocateFrom(ValueLayout.JAVA_FLOAT, b), k, crs,
                a.allocateFrom(ValueLayout.JAVA_FLOAT, g), a.allocateFrom(ValueLayout.JAVA_FLOAT, beta), a.allocateFrom(ValueLayout.JAVA_FLOAT, mean),
                a.allocateFrom(ValueLayout.JAVA_FLOAT, var), eps);
            // For any input patch v: bn(w.v + b) == w'.v + b'.
            for (int o = 0; o < k; o++) {
                double[] v = {r.nextGaussian(), r.nextGaussian(), r.nextGaussian(), r.nextGaussian()};
                double conv = b[o], fused = f[1][o];
                for (int i = 0; i < crs; i++) {
                    conv += w[(int) (o * crs + i)] * v[i];
                    fused += f[0][(int) (o * crs + i)] * v[i];
                }
                double bn = (conv - mean[o]) / Math.sqrt((double) var[o] + eps) * g[o] + beta[o];
                assertEquals(bn, fused, 1e-5 * Math.max(1, Math.abs(bn)), "channel " + o);
            }
        }
    }
}
