package org.distill4j.core.lm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.TokenWindows;
import org.distill4j.core.io.Npy;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.distill4j.core.train.Checkpoints;
import org.distill4j.core.train.TrainingConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The decoder trainer's own rules, on tiny random models: the chunked loss equals the unchunked
 * one, accumulated micro-batches equal one batch, ignored targets count in neither term, the hint's
 * gradient matches finite differences, teacher-layer initialisation copies the right tensors, and
 * resume continues bit-exactly. (One step against PyTorch: tests/LmTrainStepTest.)
 */
class LmTrainerTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);
    private final Backend cpu = CpuBackend.get();

    @TempDir
    Path tmp;

    LmTrainerTest() {
        System.out.println("LmTrainerTest random seed " + seed + " (fresh inputs every run; -Ddistill4j.test.seed=N replays one)");
    }

    private Path write(String name, ObjectNode config) throws Exception {
        return DecoderModelTest.writeRandom(tmp.resolve(name), config, random, cpu);
    }

    private static TrainingConfig sgd(float lr, int batch, int accumulation) {
        return new TrainingConfig(TrainingConfig.Optimizer.SGD, lr, 0f, false, 0f, TrainingConfig.Schedule.CONSTANT, 0, 1, batch, 1, 1, 1, accumulation, 0f);
    }

    private LmTrainer.MicroBatch micro(int rows, int t, long vocab) {
        long[] in = new long[rows * t], out = new long[rows * t];
        for (int i = 0; i < in.length; i++) {
            in[i] = random.nextInt((int) vocab);
            out[i] = random.nextInt((int) vocab);
        }
        return new LmTrainer.MicroBatch(in, out, rows, t);
    }

    private static Map<String, float[]> values(DecoderModel m) {
        Map<String, float[]> v = new LinkedHashMap<>();
        for (Parameter p : m.parameters()) v.put(p.name(), p.value().toFloatArray());
        return v;
    }

    private static void assertClose(Map<String, float[]> want, Map<String, float[]> got, double tol, String what) {
        for (var e : want.entrySet()) {
            float[] a = e.getValue(), b = got.get(e.getKey());
            for (int i = 0; i < a.length; i++) {
                assertEquals(a[i], b[i], tol * Math.max(1, Math.abs(a[i])), what + ": " + e.getKey() + "[" + i + "]");
            }
        }
    }

    /** One SGD step from the same weights with the loss in chunks of `chunk` rows; returns the parameters after. */
    private Map<String, float[]> stepWith(Path studentDir, Path teacherDir, DistillationLoss kd, List<LmTrainer.MicroBatch> batches, int chunk,
                                          int accumulation) throws Exception {
        try (DecoderModel s = DecoderModel.load(cpu, studentDir); DecoderModel t = teacherDir == null ? null : DecoderModel.load(cpu, teacherDir)) {
            TrainingConfig cfg = sgd(0.5f, batches.getFirst().rows(), accumulation);
            try (LmTrainer trainer = kd == null ? LmTrainer.supervised(s, cfg) : LmTrainer.distillation(s, t, kd, cfg, s.config().vocab())) {
                trainer.lossChunk(chunk).step(batches, 1, 0.5f, 0);
            }
            return values(s);
        }
    }

    @Test
    void chunkedLossEqualsUnchunked() throws Exception {
        Path student = write("s", DecoderModelTest.config("qwen3", true)), teacher = write("t", DecoderModelTest.config("llama", false));
        var kd = new DistillationLoss(Divergence.JSD, 2f, 0.6f, 0.3f, -100);
        List<LmTrainer.MicroBatch> b = List.of(micro(3, 5, 11));
        Map<String, float[]> whole = stepWith(student, teacher, kd, b, 0, 1);
        for (int chunk : new int[] {1, 4, -1}) assertClose(whole, stepWith(student, teacher, kd, b, chunk, 1), 1e-6, "chunk " + chunk + ", seed " + seed);
        Map<String, float[]> ce = stepWith(student, null, null, b, 0, 1);
        assertClose(ce, stepWith(student, null, null, b, 4, 1), 1e-6, "CE chunk 4, seed " + seed);
    }

    @Test
    void accumulationEqualsOneBatch() throws Exception {
        Path student = write("s", DecoderModelTest.config("gpt2", true)), teacher = write("t", DecoderModelTest.config("mistral", false));
        var kd = new DistillationLoss(Divergence.KL, 1f, 0.5f, 0.5f, -100);
        LmTrainer.MicroBatch all = micro(4, 6, 11);
        LmTrainer.MicroBatch a = new LmTrainer.MicroBatch(java.util.Arrays.copyOfRange(all.inputs(), 0, 12), java.util.Arrays.copyOfRange(all.targets(), 0, 12), 2, 6);
        LmTrainer.MicroBatch b = new LmTrainer.MicroBatch(java.util.Arrays.copyOfRange(all.inputs(), 12, 24), java.util.Arrays.copyOfRange(all.targets(), 12, 24), 2, 6);
        assertClose(stepWith(student, teacher, kd, List.of(all), -1, 1), stepWith(student, teacher, kd, List.of(a, b), -1, 2), 1e-5, "seed " + seed);
        // Unequal micro-batches too: the normaliser is the step's token count, not each micro-batch's.
        LmTrainer.MicroBatch c = new LmTrainer.MicroBatch(java.util.Arrays.copyOfRange(all.inputs(), 0, 18), java.util.Arrays.copyOfRange(all.targets(), 0, 18), 3, 6);
        LmTrainer.MicroBatch d = new LmTrainer.MicroBatch(java.util.Arrays.copyOfRange(all.inputs(), 18, 24), java.util.Arrays.copyOfRange(all.targets(), 18, 24), 1, 6);
        assertClose(stepWith(student, teacher, kd, List.of(all), -1, 1), stepWith(student, teacher, kd, List.of(c, d), -1, 2), 1e-5, "3+1, seed " + seed);
    }

    /** Ignored targets count in neither term, at alpha = 1 as well: the loss and dL/dh of the counted rows equal those of the counted rows alone. */
    @Test
    void ignoredTargetsCountInNeitherTerm() throws Exception {
        long n = 12, d = 8, v = 11;
        Parameter head = new Parameter("lm_head.weight", cpu.zeros(DType.F32, v, d), true), teacherHead = new Parameter("t", cpu.zeros(DType.F32, v, d), false);
        try (Arena a = Arena.ofShared()) {
            head.value().copyFrom(gaussian((int) (v * d)));
            teacherHead.value().copyFrom(gaussian((int) (v * d)));
            float[] hs = gaussian((int) (n * d)), ht = gaussian((int) (n * d));
            long[] targets = new long[(int) n];
            List<Integer> kept = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                targets[r] = r % 3 == 1 ? -100 : random.nextInt((int) v);
                if (targets[r] != -100) kept.add(r);
            }
            for (float alpha : new float[] {1f, 0.4f}) {
                var kd = new DistillationLoss(Divergence.KL, 2f, alpha, 0.5f, -100);
                Tensor h = cpu.empty(a, DType.F32, n, d).copyFrom(hs), t = cpu.empty(a, DType.F32, n, d).copyFrom(ht), dh = cpu.empty(a, DType.F32, n, d);
                var all = ChunkedLmLoss.compute(cpu, h, head, v, targets, kd, ChunkedLmLoss.TeacherRows.ofHead(t, teacherHead, v), kept.size(), 5, dh);
                float[] hk = new float[(int) (kept.size() * d)], tk = new float[hk.length];
                long[] yk = new long[kept.size()];
                for (int i = 0; i < kept.size(); i++) {
                    System.arraycopy(hs, (int) (kept.get(i) * d), hk, (int) (i * d), (int) d);
                    System.arraycopy(ht, (int) (kept.get(i) * d), tk, (int) (i * d), (int) d);
                    yk[i] = targets[kept.get(i)];
                }
                Tensor h2 = cpu.empty(a, DType.F32, kept.size(), d).copyFrom(hk), t2 = cpu.empty(a, DType.F32, kept.size(), d).copyFrom(tk);
                Tensor dh2 = cpu.empty(a, DType.F32, kept.size(), d);
                var only = ChunkedLmLoss.compute(cpu, h2, head, v, yk, kd, ChunkedLmLoss.TeacherRows.ofHead(t2, teacherHead, v), kept.size(), 5, dh2);
                assertEquals(only.total(), all.total(), 1e-6 * Math.abs(only.total()), "alpha " + alpha + ", seed " + seed);
                assertEquals(only.hard(), all.hard(), 1e-6, "alpha " + alpha);
                float[] g = dh.toFloatArray(), g2 = dh2.toFloatArray();
                for (int r = 0, i = 0; r < n; r++) {
                    for (int j = 0; j < d; j++) {
                        float want = targets[r] == -100 ? 0f : g2[(int) (i * d + j)];
                        assertEquals(want, g[(int) (r * d + j)], 1e-6, "alpha " + alpha + " dh[" + r + ", " + j + "], seed " + seed);
                    }
                    if (targets[r] != -100) i++;
                }
            }
        } finally {
            head.close();
            teacherHead.close();
        }
    }

    private float[] gaussian(int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) random.nextGaussian();
        return v;
    }

    /** The hint term's gradient (through the student's hidden states and the learned projection) against central differences. */
    @Test
    void hintGradientMatchesFiniteDifferences() throws Exception {
        ObjectNode wide = DecoderModelTest.config("llama", false);
        wide.put("hidden_size", 12);
        wide.put("num_attention_heads", 2);
        wide.put("num_key_value_heads", 1);
        Path student = write("s", DecoderModelTest.config("qwen2", false)), teacher = write("t", wide);
        for (DecoderHint.Kind kind : DecoderHint.Kind.values()) {
            try (DecoderModel s = DecoderModel.load(cpu, student); DecoderModel t = DecoderModel.load(cpu, teacher);
                 DecoderHint hint = new DecoderHint(cpu, new DecoderHint.Spec(1, 2, 0.7f, kind), s, t, 5)) {
                int n = 10;
                float[] hs = gaussian(n * 8), ht = gaussian(n * 12);
                long[] targets = new long[n];
                targets[3] = -100;
                try (Arena a = Arena.ofShared()) {
                    Tensor h = cpu.empty(a, DType.F32, n, 8).copyFrom(hs), tt = cpu.empty(a, DType.F32, n, 12).copyFrom(ht), dh = cpu.empty(a, DType.F32, n, 8);
                    Parameter proj = hint.parameters().getFirst();
                    cpu.zero(proj.grad());
                    hint.loss(h, tt, targets, 9, dh);
                    float[] g = dh.toFloatArray(), gw = proj.grad().toFloatArray(), w = proj.value().toFloatArray();
                    for (int k = 0; k < 8; k++) {
                        int i = random.nextInt(hs.length);
                        double e = 3e-3, old = hs[i];
                        hs[i] = (float) (old + e);
                        double plus = hint.loss(h.copyFrom(hs), tt, targets, 9, cpu.empty(a, DType.F32, n, 8));
                        hs[i] = (float) (old - e);
                        double minus = hint.loss(h.copyFrom(hs), tt, targets, 9, cpu.empty(a, DType.F32, n, 8));
                        hs[i] = (float) old;
                        h.copyFrom(hs);
                        assertEquals((plus - minus) / (2 * e), g[i], 2e-3 * Math.max(1, Math.abs(g[i])), kind + " dh[" + i + "], seed " + seed);
                        int j = random.nextInt(w.length);
                        double ow = w[j];
                        w[j] = (float) (ow + e);
                        proj.value().copyFrom(w);
                        plus = hint.loss(h, tt, targets, 9, cpu.empty(a, DType.F32, n, 8));
                        w[j] = (float) (ow - e);
                        proj.value().copyFrom(w);
                        minus = hint.loss(h, tt, targets, 9, cpu.empty(a, DType.F32, n, 8));
                        w[j] = (float) ow;
                        proj.value().copyFrom(w);
                        // the FD calls accumulated into the projection's gradient: compare against the first call's value
                        assertEquals((plus - minus) / (2 * e), gw[j], 2e-3 * Math.max(1, Math.abs(gw[j])), kind + " dP[" + j + "], seed " + seed);
                    }
                }
            }
        }
    }

    /** backwardHidden's extra gradient at hidden state i is the gradient of a loss on that hidden state (central differences through the model). */
    @Test
    void hiddenStateTapAndItsGradient() throws Exception {
        Path dir = write("m", DecoderModelTest.config("gpt2", true));
        try (DecoderModel m = DecoderModel.load(cpu, dir)) {
            int b = 2, t = 4, n = b * t;
            long[] ids = new long[n];
            for (int i = 0; i < n; i++) ids[i] = random.nextInt(11);
            for (int index = 0; index <= m.config().layers(); index++) {
                float[] probe = gaussian(n * 8); // loss = sum(probe * hidden_index)
                m.zeroGrad();
                try (Arena a = Arena.ofShared()) {
                    Tensor tap = cpu.empty(a, DType.F32, n, 8);
                    Tensor h = m.forwardHidden(new Layer.Pass(cpu, a, true, 1, 1), ids, b, t, null, null, null, new DecoderModel.HiddenTap(index, tap));
                    if (index == m.config().layers()) assertArrayEquals(h.toFloatArray(), tap.toFloatArray(), "the last hidden state is the final norm's output");
                    Tensor zero = cpu.zeros(DType.F32, n, 8);
                    m.backwardHidden(zero, new DecoderModel.HiddenTap(index, cpu.empty(a, DType.F32, n, 8).copyFrom(probe)));
                    zero.close();
                }
                Parameter p = m.parameter("transformer.wte.weight");
                float[] grad = p.grad().toFloatArray(), w = p.value().toFloatArray();
                for (int k = 0; k < 4; k++) {
                    int i = (int) ids[random.nextInt(n)] * 8 + random.nextInt(8);
                    double e = 2e-3, old = w[i]; // the loss is summed in double from float32 states: rounding / e stays ~1e-4
                    w[i] = (float) (old + e);
                    p.value().copyFrom(w);
                    double plus = probeLoss(m, ids, b, t, index, probe);
                    w[i] = (float) (old - e);
                    p.value().copyFrom(w);
                    double minus = probeLoss(m, ids, b, t, index, probe);
                    w[i] = (float) old;
                    p.value().copyFrom(w);
                    assertEquals((plus - minus) / (2 * e), grad[i], 3e-3 * Math.max(1, Math.abs(grad[i])), "hidden " + index + " wte[" + i + "], seed " + seed);
                }
            }
        }
    }

    private double probeLoss(DecoderModel m, long[] ids, int b, int t, int index, float[] probe) {
        try (Arena a = Arena.ofShared()) {
            Tensor tap = cpu.empty(a, DType.F32, (long) b * t, 8);
            m.forwardHidden(new Layer.Pass(cpu, a, false, 0, 0), ids, b, t, null, null, null, new DecoderModel.HiddenTap(index, tap));
            float[] h = tap.toFloatArray();
            double s = 0;
            for (int i = 0; i < h.length; i++) s += (double) probe[i] * h[i];
            return s;
        }
    }

    @Test
    void teacherLayersInitialisation() throws Exception {
        Path teacher = write("t", DecoderModelTest.config("qwen3", false));
        try (DecoderModel t = DecoderModel.load(cpu, teacher); DecoderModel s = DecoderModel.fromTeacherLayers(t, new int[] {1})) {
            assertEquals(1, s.config().layers());
            assertEquals(1, s.config().json().get("num_hidden_layers").asInt());
            for (Parameter p : s.parameters()) {
                String source = p.name().replace("layers.0.", "layers.1.");
                assertArrayEquals(t.parameter(source).value().toFloatArray(), p.value().toFloatArray(), p.name() + " <- " + source);
            }
            assertThrows(IllegalArgumentException.class, () -> DecoderModel.fromTeacherLayers(t, new int[] {2}));
        }
    }

    @Test
    void sharedVocabularyAcceptsPaddingOnly() throws Exception {
        ObjectNode a = DecoderModelTest.config("qwen2", false), b = DecoderModelTest.config("qwen2", false);
        a.put("vocab_size", 151936);
        b.put("vocab_size", 152064);
        DecoderConfig ca = DecoderConfig.of(Path.of("t/config.json"), a), cb = DecoderConfig.of(Path.of("s/config.json"), b);
        assertEquals(151936, LmTrainer.sharedVocabulary(ca, cb, 151665));
        b.put("vocab_size", 50257);
        DecoderConfig other = DecoderConfig.of(Path.of("s/config.json"), b);
        var e = assertThrows(IllegalArgumentException.class, () -> LmTrainer.sharedVocabulary(ca, other, 0));
        assertTrue(e.getMessage().contains("differ by more than padding"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> LmTrainer.sharedVocabulary(ca, cb, 152000), "a tokenizer larger than the shared range");
    }

    /** Two steps straight, or one step, a checkpoint, and a resumed second step: the same weights bit for bit. */
    @Test
    void resumeIsBitExact() throws Exception {
        Path dir = write("m", DecoderModelTest.config("llama", true));
        long[] tokens = new long[8 * 6 + 1];
        for (int i = 0; i < tokens.length; i++) tokens[i] = random.nextInt(11);
        Path file = tmp.resolve("tokens.npy");
        Npy.writeLongs(file, tokens, tokens.length);
        TrainingConfig adam = new TrainingConfig(TrainingConfig.Optimizer.ADAMW, 1e-2f, 0f, false, 0.1f, TrainingConfig.Schedule.COSINE, 1, 1, 2, 3, 1, 1, 1, 1f);
        Map<String, float[]> straight, resumed;
        try (TokenWindows w = TokenWindows.open(file, 6, 11); DecoderModel m = DecoderModel.load(cpu, dir); LmTrainer tr = LmTrainer.supervised(m, adam)) {
            tr.fit(w, null, x -> { }, new Checkpoints(tmp.resolve("ck1"), 1, 5, false));
            straight = values(m);
        }
        try (TokenWindows w = TokenWindows.open(file, 6, 11); DecoderModel m = DecoderModel.load(cpu, dir); LmTrainer tr = LmTrainer.supervised(m, adam)) {
            tr.stopAfter(1).fit(w, null, x -> { }, new Checkpoints(tmp.resolve("ck2"), 1, 5, false));
        }
        try (TokenWindows w = TokenWindows.open(file, 6, 11); DecoderModel m = DecoderModel.load(cpu, dir); LmTrainer tr = LmTrainer.supervised(m, adam)) {
            List<String> notes = new ArrayList<>();
            tr.onNote(notes::add).fit(w, null, x -> { }, new Checkpoints(tmp.resolve("ck2"), 1, 5, true));
            assertTrue(notes.stream().anyMatch(s -> s.startsWith("resumed from")), notes.toString());
            resumed = values(m);
        }
        for (var e : straight.entrySet()) assertArrayEquals(e.getValue(), resumed.get(e.getKey()), e.getKey() + ", seed " + seed);
    }

    /** GKD: greedy continuations equal step-by-step argmax of full forwards; prompt targets are ignored; the step uses the divergence alone. */
    @Test
    void onPolicyContinuations() throws Exception {
        Path student = write("s", DecoderModelTest.config("qwen2", false)), teacher = write("t", DecoderModelTest.config("gpt2", true));
        int rows = 2, t = 6, p = 3;
        try (DecoderModel s = DecoderModel.load(cpu, student); DecoderModel te = DecoderModel.load(cpu, teacher);
             LmTrainer tr = LmTrainer.distillation(s, te, new DistillationLoss(Divergence.KL, 1f, 0.3f, 0.5f, -100), sgd(0.1f, rows, 1), 11)) {
            tr.onPolicy(1, p, 0);
            LmTrainer.MicroBatch m = micro(rows, t, 11);
            LmTrainer.MicroBatch c = tr.studentContinuations(m, 0);
            assertTrue(c.onPolicy());
            for (int r = 0; r < rows; r++) {
                long[] seq = new long[t + 1];
                System.arraycopy(m.inputs(), r * t, seq, 0, p);
                for (int i = p; i <= t; i++) {
                    try (Arena a = Arena.ofShared()) {
                        float[] logits = s.forward(new Layer.Pass(cpu, a, false, 0, 0), java.util.Arrays.copyOf(seq, i), 1, i, null, null, null).toFloatArray();
                        seq[i] = TokenSampler.argmax(java.util.Arrays.copyOfRange(logits, (i - 1) * 11, i * 11), 11);
                    }
                }
                for (int i = 0; i < t; i++) {
                    assertEquals(seq[i], c.inputs()[r * t + i], "row " + r + " input " + i + ", seed " + seed);
                    assertEquals(i < p - 1 ? -100 : seq[i + 1], c.targets()[r * t + i], "row " + r + " target " + i + ", seed " + seed);
                }
            }
            var terms = tr.step(List.of(c), 1, 0.1f, 0);
            assertEquals(0.0, terms.terms().hard(), 0.0, "on-policy micro-batches train on the divergence alone");
            assertEquals((long) rows * (t + 1 - p), terms.tokens(), "only the sampled tokens count");
            // sampled at a temperature: the same seed draws the same tokens
            tr.onPolicy(1, p, 1.5);
            assertArrayEquals(tr.studentContinuations(m, 7).inputs(), tr.studentContinuations(m, 7).inputs());
        }
    }
}
