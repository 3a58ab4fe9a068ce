package org.distill4j.core.lm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Locale;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.junit.jupiter.api.io.TempDir;

/**
 * Each model of fixtures/lm (made by make_lm_fixtures.py with transformers, fp32 eager) against
 * its reference.safetensors. Logits: max over rows (b, t) of max_c |got - want| / max_c |want| <=
 * 1e-4. Gradients of the mean next-token cross-entropy: per parameter, max |got - want| /
 * max |want| <= 1e-4. Padded batches at their real tokens (and at the pads: left against
 * transformers' sdpa logits, whose fully masked rows are zero as ours; right against eager's),
 * KV-cache decoding, write -> read, and writing in the dtype read from disk.
 */
class DecoderFixtureTest {
    static final Path FIXTURES = Path.of("src/test/resources/fixtures/lm");
    private static final String[] MODELS = {"gpt2", "gpt2-hub", "llama-gqa", "mistral", "qwen2", "qwen3", "llama-tied-rope3-bf16", "llama-sharded"};
    private static final double LOGITS = 1e-4, GRADS = 1e-4;
    private final Backend cpu = CpuBackend.get();

    @TempDir
    Path tmp;

    @TestFactory
    Stream<DynamicTest> everyFixtureMatchesTransformers() {
        return Arrays.stream(MODELS).map(name -> DynamicTest.dynamicTest(name, () -> check(name)));
    }

    private float[] floats(Safetensors st, String name) {
        Safetensors.Entry e = st.entries().get(name);
        try (Tensor t = cpu.empty(DType.F32, e.shape())) {
            st.copyInto(name, t);
            return t.toFloatArray();
        }
    }

    private long[] longs(Safetensors st, String name) {
        Safetensors.Entry e = st.entries().get(name);
        try (Tensor t = cpu.empty(DType.I64, e.shape())) {
            st.copyInto(name, t);
            return t.toLongArray();
        }
    }

    /** max over rows of max |got - want| / max |want| for rows of {@code width}, only rows where keep[row] (null: all). */
    static double rowError(float[] got, float[] want, int width, long[] keep) {
        double worst = 0;
        for (int r = 0; r < want.length / width; r++) {
            if (keep != null && keep[r] == 0) continue;
            double diff = 0, scale = 1e-30;
            for (int c = 0; c < width; c++) {
                diff = Math.max(diff, Math.abs(got[r * width + c] - want[r * width + c]));
                scale = Math.max(scale, Math.abs(want[r * width + c]));
            }
            worst = Math.max(worst, diff / scale);
        }
        return worst;
    }

    static double relativeError(float[] got, float[] want) {
        double diff = 0, scale = 1e-30;
        for (int i = 0; i < want.length; i++) {
            diff = Math.max(diff, Math.abs(got[i] - want[i]));
            scale = Math.max(scale, Math.abs(want[i]));
        }
        return diff / scale;
    }

    private void check(String name) throws Exception {
        Path dir = FIXTURES.resolve(name);
        assertTrue(Files.isDirectory(dir), dir + " is missing (made by make_lm_fixtures.py)");
        try (DecoderModel m = DecoderModel.load(cpu, dir); Safetensors ref = Safetensors.open(dir.resolve("reference.safetensors"))) {
            long[] shape = ref.entries().get("input_ids").shape();
            int b = (int) shape[0];
            long t = shape[1];
            int v = (int) m.config().vocab();
            long[] ids = longs(ref, "input_ids");
            StringBuilder report = new StringBuilder(name);

            // Eval logits, then the loss and every gradient (dropout off: what autograd gives in eval mode).
            float[] want = floats(ref, "logits");
            m.setDropout(false);
            m.zeroGrad();
            double loss;
            try (Arena a = Arena.ofShared()) {
                Tensor logits = m.forward(new Layer.Pass(cpu, a, true, 0, 0), ids, b, t, null, null, null);
                double logitError = rowError(logits.toFloatArray(), want, v, null);
                report.append(String.format(Locale.ROOT, ": logits %.2e", logitError));
                assertTrue(logitError <= LOGITS, name + ": logits differ from transformers' by " + logitError + " (relative to the row's max |logit|)");
                Tensor dlogits = cpu.empty(a, DType.F32, logits.shape());
                loss = DecoderModel.nextTokenLoss(logits, ids, dlogits);
                m.backward(dlogits);
            }
            float wantLoss = floats(ref, "loss")[0];
            assertEquals(wantLoss, loss, 1e-5 * Math.abs(wantLoss), name + ": loss");
            double worstGrad = 0;
            String worstName = "";
            Set<String> gradKeys = new TreeSet<>();
            for (String k : ref.entries().keySet()) if (k.startsWith("grad.")) gradKeys.add(k.substring(5));
            Set<String> stored = new TreeSet<>();
            for (Parameter p : m.parameters()) {
                String key = m.storedKeys().get(p.name());
                stored.add(key);
                assertTrue(gradKeys.contains(key), name + ": the reference has no grad." + key);
                double e = relativeError(p.grad().toFloatArray(), floats(ref, "grad." + key));
                if (e > worstGrad) {
                    worstGrad = e;
                    worstName = key;
                }
                assertTrue(e <= GRADS, name + ": gradient of " + key + " differs from PyTorch's by " + e + " (relative to its max)");
            }
            assertEquals(gradKeys, stored, name + ": parameters vs the reference's gradients");
            report.append(String.format(Locale.ROOT, ", grads %.2e (%s)", worstGrad, worstName));

            // Padded batches: transformers' default positions (arange), generate()'s cumsum positions, and the unpadded rows.
            try (Arena a = Arena.ofShared()) {
                Layer.Pass pass = new Layer.Pass(cpu, a, false, 0, 0);
                double padError = 0, masked = 0;
                for (String side : new String[] {"left", "right"}) {
                    long[] pids = longs(ref, side + "_input_ids"), mask = longs(ref, side + "_attention_mask");
                    float[] got = m.forward(pass, pids, b, t, mask, longs(ref, side + "_position_ids"), null).toFloatArray();
                    padError = Math.max(padError, rowError(got, floats(ref, side + "_logits"), v, mask));
                    float[] byDefault = m.forward(pass, pids, b, t, mask, null, null).toFloatArray();
                    assertArrayEquals(got, byDefault, name + " " + side + ": the recorded position ids are the default ones");
                    if (side.equals("left")) {
                        // Every position, the pads included: a left pad sees no key and gets a zero attention output, as
                        // transformers' sdpa path gives (its eager path averages every value instead: make_lm_fixtures.py).
                        masked = Math.max(masked, rowError(got, floats(ref, "left_sdpa_logits"), v, null));
                    } else {
                        // A right pad sees the real tokens before it: eager's logits hold at every position.
                        masked = Math.max(masked, rowError(got, floats(ref, "right_logits"), v, null));
                    }
                    long[] cumsum = DecoderModel.positionsFromMask(mask, b, t);
                    float[] gen = m.forward(pass, pids, b, t, mask, cumsum, null).toFloatArray();
                    if (ref.entries().containsKey(side + "_cumsum_logits")) {
                        padError = Math.max(padError, rowError(gen, floats(ref, side + "_cumsum_logits"), v, mask));
                    }
                    // With generate()'s positions each real token's logits are its unpadded row's.
                    for (int r = 0; r < b; r++) {
                        int real = 0;
                        for (int i = 0; i < t; i++) {
                            if (mask[(int) (r * t + i)] == 0) continue;
                            float[] g = Arrays.copyOfRange(gen, (int) ((r * t + i) * v), (int) ((r * t + i + 1) * v));
                            float[] u = Arrays.copyOfRange(want, (int) ((r * t + real) * v), (int) ((r * t + real + 1) * v));
                            padError = Math.max(padError, rowError(g, u, v, null));
                            real++;
                        }
                    }
                }
                report.append(String.format(Locale.ROOT, ", padded %.2e (pad positions too %.2e)", padError, masked));
                assertTrue(padError <= LOGITS, name + ": padded logits differ by " + padError);
                assertTrue(masked <= LOGITS, name + ": padded logits, pad positions included, differ from transformers' (left: sdpa) by " + masked);

                // KV cache: a prefill of 3 tokens, then one at a time.
                double cacheError = 0;
                try (DecoderModel.KvCache cache = m.newCache(b, t)) {
                    for (long start = 0; start < t; ) {
                        long len = start == 0 ? 3 : 1;
                        long[] step = new long[(int) (b * len)];
                        for (int r = 0; r < b; r++) System.arraycopy(ids, (int) (r * t + start), step, (int) (r * len), (int) len);
                        float[] got = m.forward(pass, step, b, len, null, null, cache).toFloatArray();
                        float[] expect = new float[got.length];
                        for (int r = 0; r < b; r++) System.arraycopy(want, (int) ((r * t + start) * v), expect, (int) (r * len * v), (int) (len * v));
                        cacheError = Math.max(cacheError, rowError(got, expect, v, null));
                        start += len;
                    }
                }
                report.append(String.format(Locale.ROOT, ", kv-cache %.2e", cacheError));
                assertTrue(cacheError <= LOGITS, name + ": KV-cache decoding differs by " + cacheError);

                // Write, read back: the same logits, and the keys save_pretrained writes.
                Path out = tmp.resolve(name);
                m.save(out);
                float[] before = m.forward(pass, ids, b, t, null, null, null).toFloatArray();
                try (DecoderModel back = DecoderModel.load(cpu, out); Safetensors written = Safetensors.open(out.resolve("model.safetensors"))) {
                    assertArrayEquals(before, back.forward(pass, ids, b, t, null, null, null).toFloatArray(), name + ": logits after write -> read");
                    Set<String> expected = new HashSet<>(m.storedKeys().keySet());
                    assertEquals(new TreeSet<>(expected), new TreeSet<>(written.entries().keySet()), name + ": written keys");
                    for (Parameter p : m.parameters()) assertArrayEquals(p.value().shape(), written.entries().get(p.name()).shape(), p.name());
                }
            }
            System.out.println("DecoderFixtureTest " + report);
        }
    }
    /**
     * save(dir) writes the dtype read from disk, as save_pretrained writes a model's dtype: the
     * transformers-written BF16 fixture loaded and saved gives each tensor's bytes back exactly
     * (BF16 -> F32 -> BF16 is the identity), and the F32 fixture likewise; an explicit dtype
     * overrides it (F32 widens exactly; F16 written, loaded and saved again is F16, bit for bit).
     */
    @Test
    void savesInTheDtypeReadFromDisk() throws Exception {
        ObjectMapper json = new ObjectMapper();
        for (String[] c : new String[][] {{"llama-tied-rope3-bf16", "BF16", "bfloat16"}, {"gpt2", "F32", "float32"}}) {
            Path dir = FIXTURES.resolve(c[0]), out = tmp.resolve(c[0] + "-resaved");
            try (DecoderModel m = DecoderModel.load(cpu, dir)) {
                assertEquals(DType.valueOf(c[1]), m.writeDtype(), c[0]);
                m.save(out);
            }
            assertSameTensorBytes(dir.resolve("model.safetensors"), out.resolve("model.safetensors"), c[1]);
            assertEquals(c[2], json.readTree(out.resolve("config.json").toFile()).get("dtype").asText(), c[0] + ": config.json dtype");
        }
        Path bf16 = FIXTURES.resolve("llama-tied-rope3-bf16"), f32 = tmp.resolve("as-f32"), f16 = tmp.resolve("as-f16"), f16again = tmp.resolve("f16-again");
        try (DecoderModel m = DecoderModel.load(cpu, bf16)) {
            m.save(f32, DType.F32);
            m.save(f16, DType.F16);
            try (Safetensors orig = Safetensors.open(bf16.resolve("model.safetensors")); Safetensors wide = Safetensors.open(f32.resolve("model.safetensors"))) {
                for (String k : orig.entries().keySet()) {
                    assertEquals("F32", wide.entries().get(k).dtype(), k);
                    assertArrayEquals(m.parameter(k).value().toFloatArray(), floats(wide, k), k + ": F32 holds the BF16 values exactly");
                }
            }
        }
        assertEquals("float32", json.readTree(f32.resolve("config.json").toFile()).get("dtype").asText());
        assertEquals("float16", json.readTree(f16.resolve("config.json").toFile()).get("dtype").asText());
        try (DecoderModel m = DecoderModel.load(cpu, f16)) {
            assertEquals(DType.F16, m.writeDtype());
            m.save(f16again);
        }
        assertSameTensorBytes(f16.resolve("model.safetensors"), f16again.resolve("model.safetensors"), "F16");
    }

    /** The same keys, each stored as {@code dtype} with the same shape and the same bytes. */
    private static void assertSameTensorBytes(Path original, Path written, String dtype) throws Exception {
        try (Safetensors a = Safetensors.open(original); Safetensors b = Safetensors.open(written)) {
            assertEquals(new TreeSet<>(a.entries().keySet()), new TreeSet<>(b.entries().keySet()), written + ": keys");
            for (Safetensors.Entry e : a.entries().values()) {
                Safetensors.Entry w = b.entries().get(e.name());
                assertEquals(dtype, e.dtype(), original + ": " + e.name());
                assertEquals(dtype, w.dtype(), written + ": " + e.name());
                assertArrayEquals(e.shape(), w.shape(), e.name());
                MemorySegment x = a.bytes(e), y = b.bytes(w);
                assertEquals(-1, x.mismatch(y), written + ": tensor '" + e.name() + "' differs from the original at byte " + x.mismatch(y));
            }
        }
    }
}
