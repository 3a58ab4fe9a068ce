package org.distill4j.core.lm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The decoder on tiny random models of each family, without Python: the whole model's gradient
 * against finite differences (a tied embedding's included), KV-cache decoding against the full
 * forward, padded rows against unpadded ones, and write -> read -> same logits.
 */
class DecoderModelTest {
    /** Fresh weights every run; the seed is in every failure message, and -Ddistill4j.test.seed=N replays one. */
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);
    private final Backend cpu = CpuBackend.get();
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path tmp;

    DecoderModelTest() {
        System.out.println("DecoderModelTest random seed " + seed + " (fresh inputs every run; the seed reproduces a failure)");
    }

    /** A config.json of each family with small sizes; dropout off so the finite differences see a deterministic function. */
    static ObjectNode config(String modelType, boolean tied) {
        ObjectNode c = JSON.createObjectNode();
        c.put("model_type", modelType);
        c.put("vocab_size", 11);
        c.put("tie_word_embeddings", tied);
        if (modelType.equals("gpt2")) {
            c.put("n_embd", 8);
            c.put("n_layer", 2);
            c.put("n_head", 2);
            c.put("n_positions", 16);
            c.put("n_inner", 12);
            c.put("layer_norm_epsilon", 1e-5);
            for (String k : List.of("embd_pdrop", "attn_pdrop", "resid_pdrop")) c.put(k, 0.0);
            return c;
        }
        c.put("hidden_size", 8);
        c.put("intermediate_size", 12);
        c.put("num_hidden_layers", 2);
        c.put("num_attention_heads", 4);
        c.put("num_key_value_heads", 2);
        c.put("max_position_embeddings", 32);
        c.put("rms_norm_eps", 1e-6);
        c.put("hidden_act", "silu");
        if (modelType.equals("qwen3")) c.put("head_dim", 6);
        ObjectNode rope = c.putObject("rope_parameters");
        rope.put("rope_theta", 10000.0);
        if (modelType.equals("llama")) {
            rope.put("rope_type", "llama3");
            rope.put("factor", 8.0);
            rope.put("low_freq_factor", 1.0);
            rope.put("high_freq_factor", 4.0);
            rope.put("original_max_position_embeddings", 8);
        } else {
            rope.put("rope_type", "default");
        }
        return c;
    }

    /** Writes config + random weights (1-D tensors around 1 or 0 with noise) into a fresh folder. */
    Path write(String name, ObjectNode config) throws Exception {
        return writeRandom(tmp.resolve(name), config, random, cpu);
    }

    /** A model folder at {@code dir}: config.json and random weights (norm weights 1 + noise, the rest 0.3 N(0, 1)) from {@code random}. */
    static Path writeRandom(Path dir, ObjectNode config, Random random, Backend cpu) throws Exception {
        Files.createDirectories(dir);
        Files.writeString(dir.resolve("config.json"), config.toPrettyString());
        DecoderConfig c = DecoderConfig.read(dir);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (DecoderFamily.TensorSpec t : c.family().tensors(c)) {
            float[] v = new float[(int) t.numel()];
            boolean normWeight = t.shape().length == 1 && (t.name().contains("norm") || t.name().contains("ln_")) && t.name().endsWith("weight");
            for (int i = 0; i < v.length; i++) v[i] = (float) ((normWeight ? 1 : 0) + 0.3 * random.nextGaussian());
            tensors.put(t.name(), cpu.fromArray(v, t.shape()));
        }
        Safetensors.write(dir.resolve("model.safetensors"), tensors, Map.of("format", "pt"));
        tensors.values().forEach(Tensor::close);
        return dir;
    }

    private long[] randomIds(int n, long vocab) {
        long[] ids = new long[n];
        for (int i = 0; i < n; i++) ids[i] = random.nextInt((int) vocab);
        return ids;
    }

    /** The loss of a forward; in training mode with a fixed (seed, step), so that dropout masks are the same at every call. */
    private static double loss(DecoderModel m, long[] ids, int b, long t, boolean train) {
        try (Arena a = Arena.ofShared()) {
            Tensor logits = m.forward(new Layer.Pass(m.backend(), a, train, 7, 3), ids, b, t, null, null, null);
            return DecoderModel.nextTokenLoss(logits, ids, null);
        }
    }

    /** The whole model's gradient against central differences of the loss, on sampled entries of every parameter. */
    private void checkModelGradient(String what, Path dir, boolean train) throws Exception {
        try (DecoderModel m = DecoderModel.load(cpu, dir)) {
            int b = 2;
            long t = 5;
            long[] ids = randomIds(b * (int) t, m.config().vocab());
            m.zeroGrad();
            try (Arena a = Arena.ofShared()) {
                Tensor logits = m.forward(new Layer.Pass(cpu, a, true, 7, 3), ids, b, t, null, null, null);
                Tensor dlogits = cpu.empty(a, DType.F32, logits.shape());
                DecoderModel.nextTokenLoss(logits, ids, dlogits);
                m.backward(dlogits);
            }
            for (Parameter p : m.parameters()) {
                float[] grad = p.grad().toFloatArray(), value = p.value().toFloatArray();
                double scale = 1e-4;
                for (float g : grad) scale = Math.max(scale, Math.abs(g));
                for (int k = 0; k < 6; k++) {
                    int i = random.nextInt(value.length);
                    double h = 2e-3; // float32 loss rounding / h stays ~1e-4, truncation h^2 f''' well below the tolerance
                    float old = value[i];
                    value[i] = (float) (old + h);
                    p.value().copyFrom(value);
                    double plus = loss(m, ids, b, t, train);
                    value[i] = (float) (old - h);
                    p.value().copyFrom(value);
                    double minus = loss(m, ids, b, t, train);
                    value[i] = old;
                    p.value().copyFrom(value);
                    double numeric = (plus - minus) / (2 * h);
                    // 5e-4: the float32 forward's rounding of the loss (~1e-6) divided by 2h, a floor for parameters whose gradients are all tiny.
                    assertTrue(Math.abs(numeric - grad[i]) <= 1e-2 * scale + 1e-2 * Math.abs(numeric) + 5e-4,
                        what + " " + p.name() + "[" + i + "]: backward " + grad[i] + ", finite difference " + numeric + " (seed " + seed + ")");
                }
            }
        }
    }

    @Test
    void modelGradientMatchesFiniteDifferences() throws Exception {
        for (String[] family : new String[][] {{"gpt2", "true"}, {"llama", "true"}, {"qwen2", "false"}, {"qwen3", "false"}, {"mistral", "false"}}) {
            checkModelGradient(family[0], write(family[0], config(family[0], Boolean.parseBoolean(family[1]))), false);
        }
    }

    /** With dropout on (GPT-2's three pdrops, llama's attention_dropout): the masks are functions of (seed, step), so the loss is a fixed function to differentiate. */
    @Test
    void gradientWithDropoutMatchesFiniteDifferences() throws Exception {
        ObjectNode gpt2 = config("gpt2", true);
        for (String k : List.of("embd_pdrop", "attn_pdrop", "resid_pdrop")) gpt2.put(k, 0.2);
        checkModelGradient("gpt2 with dropout", write("gpt2-dropout", gpt2), true);
        ObjectNode llama = config("llama", false);
        llama.put("attention_dropout", 0.3);
        checkModelGradient("llama with attention dropout", write("llama-dropout", llama), true);
        // And dropout does act: a training forward differs from an eval forward.
        try (DecoderModel m = DecoderModel.load(cpu, tmp.resolve("gpt2-dropout"))) {
            long[] ids = randomIds(10, m.config().vocab());
            assertTrue(loss(m, ids, 2, 5, true) != loss(m, ids, 2, 5, false), "dropout changes the training loss");
        }
    }

    /** Prefill of 3 tokens, then one token at a time, gives the full forward's logits (with a left-padded row). */
    @Test
    void kvCacheDecodingEqualsTheFullForward() throws Exception {
        for (String family : new String[] {"gpt2", "llama", "qwen3"}) {
            Path dir = write(family + "-kv", config(family, family.equals("gpt2")));
            try (DecoderModel m = DecoderModel.load(cpu, dir); Arena a = Arena.ofShared()) {
                int b = 2;
                long t = 7, prefill = 3;
                long v = m.config().vocab();
                long[] ids = randomIds(b * (int) t, v), mask = new long[b * (int) t];
                java.util.Arrays.fill(mask, 1);
                mask[(int) t] = 0; // row 1 starts with a pad
                Layer.Pass pass = new Layer.Pass(cpu, a, false, 0, 0);
                float[] full = m.forward(pass, ids, b, t, mask, null, null).toFloatArray();
                try (DecoderModel.KvCache cache = m.newCache(b, t)) {
                    for (long start = 0; start < t; ) {
                        long len = start == 0 ? prefill : 1;
                        long[] stepIds = new long[(int) (b * len)], stepMask = new long[(int) (b * len)];
                        for (int r = 0; r < b; r++) {
                            for (long i = 0; i < len; i++) {
                                stepIds[(int) (r * len + i)] = ids[(int) (r * t + start + i)];
                                stepMask[(int) (r * len + i)] = mask[(int) (r * t + start + i)];
                            }
                        }
                        float[] got = m.forward(pass, stepIds, b, len, stepMask, null, cache).toFloatArray();
                        for (int r = 0; r < b; r++) {
                            for (long i = 0; i < len; i++) {
                                if (mask[(int) (r * t + start + i)] == 0) continue;
                                for (long c = 0; c < v; c++) {
                                    float want = full[(int) (((r * t) + start + i) * v + c)], have = got[(int) ((r * len + i) * v + c)];
                                    assertEquals(want, have, 1e-5 * Math.max(1, Math.abs(want)), family + " row " + r + " token " + (start + i) + " (seed " + seed + ")");
                                }
                            }
                        }
                        start += len;
                    }
                    assertEquals(t, cache.length());
                }
            }
        }
    }

    /** A left- or right-padded row gives its unpadded logits at its real tokens (generate()'s cumsum positions). */
    @Test
    void paddedRowsEqualUnpaddedRows() throws Exception {
        for (String family : new String[] {"gpt2", "qwen2"}) {
            Path dir = write(family + "-pad", config(family, false));
            try (DecoderModel m = DecoderModel.load(cpu, dir); Arena a = Arena.ofShared()) {
                long v = m.config().vocab(), t = 6, pad = 2;
                long[] row = randomIds((int) (t - pad), v);
                Layer.Pass pass = new Layer.Pass(cpu, a, false, 0, 0);
                float[] alone = m.forward(pass, row, 1, t - pad, null, null, null).toFloatArray();
                for (boolean left : new boolean[] {true, false}) {
                    long[] ids = new long[(int) t], mask = new long[(int) t];
                    for (int i = 0; i < t - pad; i++) {
                        ids[(int) (left ? pad + i : i)] = row[i];
                        mask[(int) (left ? pad + i : i)] = 1;
                    }
                    long[] positions = DecoderModel.positionsFromMask(mask, 1, t);
                    float[] got = m.forward(pass, ids, 1, t, mask, positions, null).toFloatArray();
                    for (int i = 0; i < t - pad; i++) {
                        for (int c = 0; c < v; c++) {
                            float want = alone[(int) (i * v + c)], have = got[(int) (((left ? pad : 0) + i) * v + c)];
                            assertEquals(want, have, 1e-5 * Math.max(1, Math.abs(want)), family + (left ? " left" : " right") + " pad, token " + i + " (seed " + seed + ")");
                        }
                    }
                }
            }
        }
    }

    /** save -> load gives the same logits and the keys save_pretrained writes (a tied lm_head omitted). */
    @Test
    void writeThenReadGivesTheSameModel() throws Exception {
        for (String[] family : new String[][] {{"gpt2", "true"}, {"llama", "true"}, {"qwen3", "false"}}) {
            Path dir = write(family[0] + "-src", config(family[0], Boolean.parseBoolean(family[1])));
            Path out = tmp.resolve(family[0] + "-written");
            try (DecoderModel m = DecoderModel.load(cpu, dir); Arena a = Arena.ofShared()) {
                m.save(out);
                long[] ids = randomIds(8, m.config().vocab());
                Layer.Pass pass = new Layer.Pass(cpu, a, false, 0, 0);
                float[] before = m.forward(pass, ids, 2, 4, null, null, null).toFloatArray();
                try (DecoderModel back = DecoderModel.load(cpu, out); Safetensors st = Safetensors.open(out.resolve("model.safetensors"));
                     Safetensors orig = Safetensors.open(dir.resolve("model.safetensors"))) {
                    org.junit.jupiter.api.Assertions.assertArrayEquals(before, back.forward(pass, ids, 2, 4, null, null, null).toFloatArray());
                    assertEquals(orig.entries().keySet(), st.entries().keySet());
                    assertEquals(Boolean.parseBoolean(family[1]), !st.entries().containsKey("lm_head.weight"));
                }
            }
        }
    }

    /** from_config's initialisation: N(0, initializer_range) weights, GPT-2's scaled c_proj, unit norms, zero biases; the same seed gives the same model. */
    @Test
    void newModelFromConfig() throws Exception {
        ObjectNode json = config("gpt2", true);
        json.put("n_embd", 64);
        json.put("n_inner", 256);
        json.put("vocab_size", 500);
        json.put("initializer_range", 0.05);
        Path dir = tmp.resolve("new");
        Files.createDirectories(dir);
        Files.writeString(dir.resolve("config.json"), json.toPrettyString());
        try (DecoderModel a = DecoderModel.fromConfig(cpu, dir, 5); DecoderModel b = DecoderModel.fromConfig(cpu, dir, 5)) {
            float[] wte = a.parameter("transformer.wte.weight").value().toFloatArray(), proj = a.parameter("transformer.h.0.mlp.c_proj.weight").value().toFloatArray();
            assertEquals(0.05, std(wte), 0.002, "embedding std");
            assertEquals(0.05 / Math.sqrt(4), std(proj), 0.002, "GPT-2's c_proj std / sqrt(2 n_layer)");
            for (float v : a.parameter("transformer.h.1.ln_2.weight").value().toFloatArray()) assertEquals(1f, v);
            for (float v : a.parameter("transformer.h.1.attn.c_attn.bias").value().toFloatArray()) assertEquals(0f, v);
            org.junit.jupiter.api.Assertions.assertArrayEquals(wte, b.parameter("transformer.wte.weight").value().toFloatArray(), "same seed, same model");
            Path out = tmp.resolve("new-written");
            a.save(out);
            try (DecoderModel back = DecoderModel.load(cpu, out); Arena arena = Arena.ofShared()) {
                long[] ids = randomIds(6, 500);
                Layer.Pass pass = new Layer.Pass(cpu, arena, false, 0, 0);
                org.junit.jupiter.api.Assertions.assertArrayEquals(a.forward(pass, ids, 2, 3, null, null, null).toFloatArray(),
                    back.forward(pass, ids, 2, 3, null, null, null).toFloatArray());
            }
        }
    }

    private static double std(float[] v) {
        double s = 0, s2 = 0;
        for (float x : v) {
            s += x;
            s2 += (double) x * x;
        }
        double mean = s / v.length;
        return Math.sqrt(s2 / v.length - mean * mean);
    }

    @Test
    void aBackendWithoutDecoderOpsIsRefusedInOneLine() {
        Backend fake = (Backend) java.lang.reflect.Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
            (proxy, method, args) -> method.getName().equals("name") ? "other:0" : null);
        UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class, () -> DecoderModel.load(fake, write("other", config("gpt2", true))));
        assertTrue(e.getMessage().contains("CPU and CUDA backends") && e.getMessage().contains("other:0"), e.getMessage());
    }
}
