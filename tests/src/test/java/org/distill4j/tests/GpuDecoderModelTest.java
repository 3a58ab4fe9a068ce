package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Locale;
import java.util.Random;
import java.util.stream.Stream;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.lm.LmTrainer;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.distill4j.core.train.TrainingConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.junit.jupiter.api.io.TempDir;

/**
 * DecoderModel on CUDA (CudaDecoderOps, strict FP32) against the same model on the CPU (the
 * oracle), on every committed fixture (core/src/test/resources/fixtures/lm: gpt2, gpt2-hub,
 * llama-gqa, mistral, qwen2, qwen3, llama-tied-rope3-bf16, llama-sharded), fresh random token ids
 * each run (seed printed): eval logits; in training mode (dropout off) the logits, the mean
 * next-token loss and every parameter's gradient (a tied embedding's both uses); padded batches
 * (left and right, generate()'s cumsum positions) at every position; KV-cache decoding (a prefill
 * of 3 tokens, then one at a time) against the CPU's full forward; a hidden-state tap and
 * backwardHidden; fromConfig (initialised on the host: the same bits) and save on CUDA read back on
 * the CPU. A frozen bf16 model (gpt2, qwen3, llama-tied-rope3-bf16) against the CPU's bf16 model and
 * PyTorch's bf16 recipe, KV-cache decoding included. Bounds: logits max |gpu - cpu| <= 1e-4 max(1, max |cpu row|) per row; loss 1e-5
 * relative; gradients max |gpu - cpu| <= 1e-4 max(1e-6, max |cpu|) per parameter (GpuDecoderOpsTest
 * bounds each op's backward at 1e-4, its forward at 1e-5). Tag "gpu": skipped without a GPU.
 */
@Tag("gpu")
class GpuDecoderModelTest {
    private static final Path LM = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/lm").normalize();
    private static final String[] MODELS = {"gpt2", "gpt2-hub", "llama-gqa", "mistral", "qwen2", "qwen3", "llama-tied-rope3-bf16", "llama-sharded"};
    /** The fixtures with PyTorch's bf16-compute logits (bf16-compute.safetensors; see core's DecoderBf16Test). */
    private static final String[] BF16_MODELS = {"gpt2", "qwen3", "llama-tied-rope3-bf16"};
    private static final double LOGITS = 1e-4, LOSS = 1e-5, GRADS = 1e-4;
    private static CudaBackend gpu;
    private final Backend cpu = CpuBackend.get();
    private final long seed = TestSeeds.seed(GpuDecoderModelTest.class);
    private final Random random = new Random(seed);

    @TempDir
    Path tmp;

    @BeforeAll
    static void open() {
        gpu = Gpus.openOrSkip();
        gpu.setMathMode(CudaBackend.MathMode.STRICT_FP32); // the decoder CLI's mode on CUDA: float32 products, as the CPU
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
    }

    /** max over rows of max |got - want| / max(1, max |want row|). */
    private static double rowError(float[] got, float[] want, int width) {
        assertEquals(want.length, got.length, "sizes");
        double worst = 0;
        for (int r = 0; r < want.length / width; r++) {
            double diff = 0, scale = 1;
            for (int c = 0; c < width; c++) {
                double e = Math.abs((double) got[r * width + c] - want[r * width + c]);
                diff = Double.isNaN(e) ? Double.POSITIVE_INFINITY : Math.max(diff, e);
                scale = Math.max(scale, Math.abs(want[r * width + c]));
            }
            worst = Math.max(worst, diff / scale);
        }
        return worst;
    }

    private static double relativeError(float[] got, float[] want) {
        assertEquals(want.length, got.length, "sizes");
        double diff = 0, scale = 1e-6;
        for (int i = 0; i < want.length; i++) {
            double e = Math.abs((double) got[i] - want[i]);
            diff = Double.isNaN(e) ? Double.POSITIVE_INFINITY : Math.max(diff, e);
            scale = Math.max(scale, Math.abs(want[i]));
        }
        return diff / scale;
    }

    private long[] ids(int n, long vocab) {
        long[] v = new long[n];
        for (int i = 0; i < n; i++) v[i] = random.nextLong(vocab);
        return v;
    }

    @TestFactory
    Stream<DynamicTest> cudaMatchesTheCpuOnEveryFixture() {
        return Arrays.stream(MODELS).map(name -> DynamicTest.dynamicTest(name, () -> check(name)));
    }

    private void check(String name) throws Exception {
        Path dir = LM.resolve(name);
        try (DecoderModel c = DecoderModel.load(cpu, dir); DecoderModel g = DecoderModel.load(gpu, dir)) {
            int b = 2, t = 9, v = (int) c.config().vocab();
            long[] tokens = ids(b * t, v);
            String where = name + " (seed " + seed + ")";
            StringBuilder report = new StringBuilder(name);

            // Eval logits.
            try (Arena a = Arena.ofShared(); Arena ga = Arena.ofShared()) {
                float[] want = c.forward(new Layer.Pass(cpu, a, false, 0, 0), tokens, b, t, null, null, null).toFloatArray();
                float[] got = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), tokens, b, t, null, null, null).toFloatArray();
                double e = rowError(got, want, v);
                report.append(String.format(Locale.ROOT, ": logits %.2e", e));
                assertTrue(e <= LOGITS, where + ": eval logits differ by " + e);
            }

            // Training mode, dropout off: logits, loss, every gradient.
            c.setDropout(false);
            g.setDropout(false);
            c.zeroGrad();
            g.zeroGrad();
            double cpuLoss, gpuLoss;
            try (Arena a = Arena.ofShared(); Arena ga = Arena.ofShared()) {
                Tensor cl = c.forward(new Layer.Pass(cpu, a, true, 0, 0), tokens, b, t, null, null, null);
                Tensor gl = g.forward(new Layer.Pass(gpu, ga, true, 0, 0), tokens, b, t, null, null, null);
                double e = rowError(gl.toFloatArray(), cl.toFloatArray(), v);
                assertTrue(e <= LOGITS, where + ": training logits differ by " + e);
                Tensor cd = cpu.empty(a, DType.F32, cl.shape()), gd = gpu.empty(ga, DType.F32, gl.shape());
                cpuLoss = DecoderModel.nextTokenLoss(cl, tokens, cd);
                gpuLoss = DecoderModel.nextTokenLoss(gl, tokens, gd);
                double de = rowError(gd.toFloatArray(), cd.toFloatArray(), v);
                assertTrue(de <= LOGITS, where + ": dlogits differ by " + de);
                c.backward(cd);
                g.backward(gd);
            }
            assertEquals(cpuLoss, gpuLoss, LOSS * Math.abs(cpuLoss), where + ": loss");
            double worst = 0;
            String worstName = "";
            for (Parameter p : c.parameters()) {
                double e = relativeError(g.parameter(p.name()).grad().toFloatArray(), p.grad().toFloatArray());
                if (e > worst) {
                    worst = e;
                    worstName = p.name();
                }
                assertTrue(e <= GRADS, where + ": gradient of " + p.name() + " differs by " + e + " (relative to its max)");
            }
            report.append(String.format(Locale.ROOT, ", loss %.2e, grads %.2e (%s)", Math.abs(gpuLoss - cpuLoss) / Math.abs(cpuLoss), worst, worstName));

            // Padded batches: left (row 1 starts with 3 pads) and right (row 0 ends with 2), generate()'s positions, every position.
            try (Arena a = Arena.ofShared(); Arena ga = Arena.ofShared()) {
                double padError = 0;
                for (boolean left : new boolean[] {true, false}) {
                    long[] mask = new long[b * t];
                    Arrays.fill(mask, 1);
                    if (left) for (int i = 0; i < 3; i++) mask[t + i] = 0;
                    else for (int i = t - 2; i < t; i++) mask[i] = 0;
                    long[] pos = DecoderModel.positionsFromMask(mask, b, t);
                    float[] want = c.forward(new Layer.Pass(cpu, a, false, 0, 0), tokens, b, t, mask, pos, null).toFloatArray();
                    float[] got = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), tokens, b, t, mask, pos, null).toFloatArray();
                    padError = Math.max(padError, rowError(got, want, v));
                }
                report.append(String.format(Locale.ROOT, ", padded %.2e", padError));
                assertTrue(padError <= LOGITS, where + ": padded logits differ by " + padError);
            }

            // KV cache on the GPU: a prefill of 3 tokens, then one at a time, against the CPU's full forward.
            try (Arena a = Arena.ofShared(); Arena ga = Arena.ofShared(); DecoderModel.KvCache cache = g.newCache(b, t)) {
                float[] full = c.forward(new Layer.Pass(cpu, a, false, 0, 0), tokens, b, t, null, null, null).toFloatArray();
                double cacheError = 0;
                for (int start = 0; start < t; ) {
                    int len = start == 0 ? 3 : 1;
                    long[] step = new long[b * len];
                    for (int r = 0; r < b; r++) System.arraycopy(tokens, r * t + start, step, r * len, len);
                    float[] got = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), step, b, len, null, null, cache).toFloatArray();
                    float[] want = new float[got.length];
                    for (int r = 0; r < b; r++) System.arraycopy(full, (r * t + start) * v, want, r * len * v, len * v);
                    cacheError = Math.max(cacheError, rowError(got, want, v));
                    start += len;
                }
                assertEquals(t, cache.length());
                report.append(String.format(Locale.ROOT, ", kv-cache %.2e", cacheError));
                assertTrue(cacheError <= LOGITS, where + ": KV-cache decoding on CUDA differs from the CPU's full forward by " + cacheError);
            }

            // Save on CUDA (through host memory), read back on the CPU: the CPU model's logits.
            Path saved = tmp.resolve(name);
            g.save(saved);
            try (DecoderModel back = DecoderModel.load(cpu, saved); Arena a = Arena.ofShared()) {
                Layer.Pass pass = new Layer.Pass(cpu, a, false, 0, 0);
                assertArrayEquals(c.forward(pass, tokens, b, t, null, null, null).toFloatArray(), back.forward(pass, tokens, b, t, null, null, null).toFloatArray(),
                    where + ": a model saved from CUDA and read on the CPU");
            }
            System.out.println("GpuDecoderModelTest " + report);
        }
    }

    /**
     * A frozen bf16 model on CUDA (bf16 weights multiplied by cublasGemmEx on x rounded to bf16,
     * nearest even; the token table gathered by d4j_embedding_forward_bf16) against the CPU's bf16
     * model on the fixtures that carry PyTorch's bf16-compute logits: eval logits on random ids,
     * PyTorch's recipe on its own ids, left-padded batches, and KV-cache decoding (prefill of 3,
     * then one token at a time) against the GPU's and the CPU's full forward. Bound: LOGITS, as the
     * float32 models: both sides round the same x to bf16 and sum exact products in float32, in
     * another order; an x within a float32 ulp of a bf16 rounding boundary could round the other way
     * (one bf16 ulp of one input), which at these widths moves a logit far less than 1e-4 of its row.
     * The model stays frozen on CUDA: no gradients, not saved.
     */
    @TestFactory
    Stream<DynamicTest> bf16OnCudaMatchesTheCpuBf16Model() {
        return Arrays.stream(BF16_MODELS).map(name -> DynamicTest.dynamicTest(name, () -> checkBf16(name)));
    }

    private void checkBf16(String name) throws Exception {
        Path dir = LM.resolve(name);
        try (DecoderModel c = DecoderModel.load(cpu, dir, DType.BF16); DecoderModel g = DecoderModel.load(gpu, dir, DType.BF16)) {
            assertEquals(DType.BF16, g.weightDtype());
            assertEquals(DType.BF16, g.lmHead().value().dtype(), "the lm_head is held in bf16 on the GPU");
            int b = 2, t = 9, v = (int) c.config().vocab();
            long[] tokens = ids(b * t, v);
            String where = name + " bf16 (seed " + seed + ")";
            StringBuilder report = new StringBuilder(name + " bf16");

            // Eval logits against the CPU's bf16 model.
            try (Arena a = Arena.ofShared(); Arena ga = Arena.ofShared()) {
                float[] want = c.forward(new Layer.Pass(cpu, a, false, 0, 0), tokens, b, t, null, null, null).toFloatArray();
                float[] got = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), tokens, b, t, null, null, null).toFloatArray();
                double e = rowError(got, want, v);
                report.append(String.format(Locale.ROOT, ": logits %.2e", e));
                assertTrue(e <= LOGITS, where + ": bf16 eval logits differ from the CPU's bf16 model by " + e);
            }

            // PyTorch's bf16-compute logits (make_lm_bf16_fixtures.py) on the fixture's own ids.
            try (Safetensors ref = Safetensors.open(dir.resolve("reference.safetensors"));
                 Safetensors recipe = Safetensors.open(dir.resolve("bf16-compute.safetensors")); Arena ga = Arena.ofShared()) {
                long[] shape = ref.entries().get("input_ids").shape();
                long[] ids;
                float[] want;
                try (Tensor i = cpu.empty(DType.I64, shape); Tensor l = cpu.empty(DType.F32, recipe.entries().get("logits").shape())) {
                    ref.copyInto("input_ids", i);
                    recipe.copyInto("logits", l);
                    ids = i.toLongArray();
                    want = l.toFloatArray();
                }
                float[] got = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), ids, (int) shape[0], shape[1], null, null, null).toFloatArray();
                double e = rowError(got, want, v);
                report.append(String.format(Locale.ROOT, ", vs PyTorch's bf16 recipe %.2e", e));
                assertTrue(e <= LOGITS, where + ": bf16 logits on CUDA differ from PyTorch's bf16 recipe by " + e);
            }

            // Left padding (row 1 starts with 3 pads), generate()'s positions.
            try (Arena a = Arena.ofShared(); Arena ga = Arena.ofShared()) {
                long[] mask = new long[b * t];
                Arrays.fill(mask, 1);
                for (int i = 0; i < 3; i++) mask[t + i] = 0;
                long[] pos = DecoderModel.positionsFromMask(mask, b, t);
                float[] want = c.forward(new Layer.Pass(cpu, a, false, 0, 0), tokens, b, t, mask, pos, null).toFloatArray();
                float[] got = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), tokens, b, t, mask, pos, null).toFloatArray();
                double e = rowError(got, want, v);
                report.append(String.format(Locale.ROOT, ", padded %.2e", e));
                assertTrue(e <= LOGITS, where + ": padded bf16 logits differ by " + e);
            }

            // KV cache on the GPU in bf16: against the GPU's own full forward and the CPU's.
            try (Arena a = Arena.ofShared(); Arena ga = Arena.ofShared(); DecoderModel.KvCache cache = g.newCache(b, t)) {
                float[] cpuFull = c.forward(new Layer.Pass(cpu, a, false, 0, 0), tokens, b, t, null, null, null).toFloatArray();
                float[] gpuFull = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), tokens, b, t, null, null, null).toFloatArray();
                double vsGpu = 0, vsCpu = 0;
                for (int start = 0; start < t; ) {
                    int len = start == 0 ? 3 : 1;
                    long[] step = new long[b * len];
                    for (int r = 0; r < b; r++) System.arraycopy(tokens, r * t + start, step, r * len, len);
                    float[] got = g.forward(new Layer.Pass(gpu, ga, false, 0, 0), step, b, len, null, null, cache).toFloatArray();
                    float[] wantGpu = new float[got.length], wantCpu = new float[got.length];
                    for (int r = 0; r < b; r++) {
                        System.arraycopy(gpuFull, (r * t + start) * v, wantGpu, r * len * v, len * v);
                        System.arraycopy(cpuFull, (r * t + start) * v, wantCpu, r * len * v, len * v);
                    }
                    vsGpu = Math.max(vsGpu, rowError(got, wantGpu, v));
                    vsCpu = Math.max(vsCpu, rowError(got, wantCpu, v));
                    start += len;
                }
                assertEquals(t, cache.length());
                report.append(String.format(Locale.ROOT, ", kv-cache vs full %.2e (cpu %.2e)", vsGpu, vsCpu));
                assertTrue(vsGpu <= LOGITS, where + ": bf16 KV-cache decoding on CUDA differs from its full forward by " + vsGpu);
                assertTrue(vsCpu <= LOGITS, where + ": bf16 KV-cache decoding on CUDA differs from the CPU's full forward by " + vsCpu);
            }

            // Frozen on CUDA too: no gradients, not saved.
            IllegalStateException e = assertThrows(IllegalStateException.class, g::zeroGrad);
            assertTrue(e.getMessage().contains("has no gradients"), e.getMessage());
            e = assertThrows(IllegalStateException.class, () -> g.save(tmp.resolve(name + "-bf16")));
            assertTrue(e.getMessage().contains("is not saved"), e.getMessage());
            System.out.println("GpuDecoderModelTest " + report);
        }
    }

    /** A student copied from a bf16 teacher on CUDA (widened through host memory) has the CPU copy's bits. */
    @Test
    void teacherLayersOfABf16TeacherOnCudaAreTheCpusWidenedWeights() throws Exception {
        Path dir = LM.resolve("llama-tied-rope3-bf16");
        try (DecoderModel c = DecoderModel.load(cpu, dir, DType.BF16); DecoderModel g = DecoderModel.load(gpu, dir, DType.BF16);
             DecoderModel cs = DecoderModel.fromTeacherLayers(c, new int[] {1}); DecoderModel gs = DecoderModel.fromTeacherLayers(g, new int[] {1})) {
            for (Parameter p : cs.parameters()) {
                assertEquals(DType.F32, gs.parameter(p.name()).value().dtype(), p.name());
                assertArrayEquals(p.value().toFloatArray(), gs.parameter(p.name()).value().toFloatArray(), p.name() + ": widened on CUDA vs the CPU");
            }
        }
    }

    @Test
    void hiddenTapAndBackwardHiddenMatchTheCpu() throws Exception {
        Path dir = LM.resolve("qwen3");
        try (DecoderModel c = DecoderModel.load(cpu, dir); DecoderModel g = DecoderModel.load(gpu, dir);
             Arena a = Arena.ofShared(); Arena ga = Arena.ofShared()) {
            int b = 2, t = 6;
            long d = c.config().hidden(), n = (long) b * t;
            long[] tokens = ids(b * t, c.config().vocab());
            c.setDropout(false);
            g.setDropout(false);
            c.zeroGrad();
            g.zeroGrad();
            int index = 1;
            Tensor ctap = cpu.empty(a, DType.F32, n, d), gtap = gpu.empty(ga, DType.F32, n, d);
            Tensor ch = c.forwardHidden(new Layer.Pass(cpu, a, true, 0, 0), tokens, b, t, null, null, null, new DecoderModel.HiddenTap(index, ctap));
            Tensor gh = g.forwardHidden(new Layer.Pass(gpu, ga, true, 0, 0), tokens, b, t, null, null, null, new DecoderModel.HiddenTap(index, gtap));
            assertTrue(rowError(gh.toFloatArray(), ch.toFloatArray(), (int) d) <= LOGITS, "final hidden states (seed " + seed + ")");
            assertTrue(rowError(gtap.toFloatArray(), ctap.toFloatArray(), (int) d) <= LOGITS, "hidden state " + index);
            float[] dh = new float[(int) (n * d)], dextra = new float[dh.length];
            for (int i = 0; i < dh.length; i++) {
                dh[i] = 2 * random.nextFloat() - 1;
                dextra[i] = 2 * random.nextFloat() - 1;
            }
            Tensor cdh = cpu.empty(a, DType.F32, n, d), gdh = gpu.empty(ga, DType.F32, n, d);
            Tensor cex = cpu.empty(a, DType.F32, n, d), gex = gpu.empty(ga, DType.F32, n, d);
            cdh.copyFrom(dh);
            gpu.write(gdh, dh);
            cex.copyFrom(dextra);
            gpu.write(gex, dextra);
            c.backwardHidden(cdh, new DecoderModel.HiddenTap(index, cex));
            g.backwardHidden(gdh, new DecoderModel.HiddenTap(index, gex));
            for (Parameter p : c.parameters()) {
                double e = relativeError(g.parameter(p.name()).grad().toFloatArray(), p.grad().toFloatArray());
                assertTrue(e <= GRADS, "backwardHidden: gradient of " + p.name() + " differs by " + e + " (seed " + seed + ")");
            }
        }
    }

    @Test
    void fromConfigOnCudaHasTheCpuBitsAndTrainingRefusesInOneLine() throws Exception {
        Path dir = LM.resolve("llama-gqa");
        try (DecoderModel c = DecoderModel.fromConfig(cpu, dir, 42); DecoderModel g = DecoderModel.fromConfig(gpu, dir, 42)) {
            for (Parameter p : c.parameters()) {
                assertArrayEquals(p.value().toFloatArray(), g.parameter(p.name()).value().toFloatArray(), p.name() + ": initialised on the host, copied");
            }
            try (DecoderModel s = DecoderModel.fromTeacherLayers(g, new int[] {1})) {
                assertArrayEquals(c.parameter("model.layers.1.mlp.up_proj.weight").value().toFloatArray(),
                    s.parameter("model.layers.0.mlp.up_proj.weight").value().toFloatArray(), "fromTeacherLayers copies on the device");
            }
            UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class,
                () -> LmTrainer.supervised(g, new TrainingConfig(TrainingConfig.Optimizer.ADAMW, 1e-2f, 0f, false, 0.1f,
                    TrainingConfig.Schedule.COSINE, 1, 1, 2, 3, 1, 1, 1, 1f)));
            assertTrue(e.getMessage().startsWith("LmTrainer (decoder training and distillation) runs on the CPU backend only so far"), e.getMessage());
        }
    }
}
