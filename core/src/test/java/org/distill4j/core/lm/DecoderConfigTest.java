package org.distill4j.core.lm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.function.Consumer;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Safetensors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Reading config.json (both rope forms, every refusal in one line naming the file and the key) and the loader's tensor checks. */
class DecoderConfigTest {
    @TempDir
    Path tmp;

    private int folders;

    private DecoderConfig read(ObjectNode json) throws Exception {
        Path dir = tmp.resolve("m" + folders++);
        Files.createDirectories(dir);
        Files.writeString(dir.resolve("config.json"), json.toPrettyString());
        return DecoderConfig.read(dir);
    }

    private ObjectNode llama(Consumer<ObjectNode> edit) {
        ObjectNode c = DecoderModelTest.config("llama", false);
        c.remove("rope_parameters");
        c.put("rope_theta", 500000.0);
        edit.accept(c);
        return c;
    }

    @Test
    void ropeIsReadFromEitherForm() throws Exception {
        DecoderConfig old = read(llama(c -> {}));
        assertEquals(500000.0, old.rope().theta());
        assertEquals("default", old.rope().type());
        DecoderConfig linear = read(llama(c -> c.putObject("rope_scaling").put("type", "linear").put("factor", 4.0)));
        float[] base = old.rope().inverseFrequencies(old.headDim()), scaled = linear.rope().inverseFrequencies(linear.headDim());
        for (int i = 0; i < base.length; i++) assertEquals(base[i] / 4, scaled[i], 1e-6 * base[i], "linear scaling divides every frequency");
        DecoderConfig newer = read(DecoderModelTest.config("llama", false));
        assertEquals("llama3", newer.rope().type());
        assertEquals(8.0, newer.rope().factor());
        assertEquals(8.0, newer.rope().originalMaxPositions());
        // llama3 (Llama 3.1's settings): wavelengths beyond 8192 / low_freq_factor are divided by the factor, those below 8192 /
        // high_freq_factor kept, the ones between blended.
        float[] def = new DecoderConfig.Rope(10000, "default", 1, 0, 0, 0).inverseFrequencies(16);
        float[] l3 = new DecoderConfig.Rope(10000, "llama3", 8, 1, 4, 8192).inverseFrequencies(16);
        assertEquals(def[0], l3[0], 0f, "short wavelengths are kept");
        assertEquals(def[7] / 8, l3[7], 1e-6 * def[7], "long wavelengths are divided by the factor");
        double wavelen = 2 * Math.PI / def[6], smooth = (8192 / wavelen - 1) / (4 - 1);
        assertTrue(wavelen > 2048 && wavelen < 8192, "index 6 is in the blended band: " + wavelen);
        assertEquals((1 - smooth) * def[6] / 8 + smooth * def[6], l3[6], 1e-6 * def[6], "the blend");
    }

    @Test
    void defaultsFollowTransformers() throws Exception {
        ObjectNode q3 = DecoderModelTest.config("qwen3", false);
        q3.remove("head_dim");
        assertEquals(128, read(q3).headDim(), "Qwen3Config's head_dim default");
        ObjectNode g = DecoderModelTest.config("gpt2", true);
        g.remove("n_inner");
        g.remove("embd_pdrop");
        g.remove("tie_word_embeddings");
        DecoderConfig gpt2 = read(g);
        assertEquals(32, gpt2.intermediate(), "4 * n_embd");
        assertEquals(0.1f, gpt2.embdDropout(), "GPT2Config's pdrop default");
        assertTrue(gpt2.tied());
        ObjectNode l = llama(c -> c.remove("num_key_value_heads"));
        assertEquals(4, read(l).kvHeads(), "no num_key_value_heads: one KV head per head");
    }

    @Test
    void everyRefusalIsOneLineNamingTheFileAndTheKey() {
        Object[][] cases = {
            {llama(c -> c.put("model_type", "gemma")), "'model_type' is \"gemma\""},
            {llama(c -> c.remove("hidden_size")), "'hidden_size' is missing"},
            {llama(c -> c.put("num_hidden_layers", "two")), "'num_hidden_layers' must be a positive integer"},
            {llama(c -> c.put("num_key_value_heads", 3)), "'num_key_value_heads' = 3 does not divide"},
            {llama(c -> c.put("hidden_act", "gelu")), "'hidden_act' is \"gelu\""},
            {llama(c -> c.put("partial_rotary_factor", 0.5)), "'partial_rotary_factor'"},
            {llama(c -> c.putObject("rope_scaling").put("rope_type", "dynamic").put("factor", 2.0)), "'rope_scaling.rope_type' is \"dynamic\""},
            {llama(c -> c.putObject("rope_scaling").put("rope_type", "llama3").put("factor", 8.0)), "'rope_scaling.low_freq_factor' is missing"},
            {llama(c -> c.putObject("rope_parameters").put("rope_type", "yarn").put("rope_theta", 1e4)), "'rope_parameters.rope_type' is \"yarn\""},
            {DecoderModelTest.config("gpt2", true).put("activation_function", "relu"), "'activation_function' is \"relu\""},
            {DecoderModelTest.config("gpt2", true).put("attn_pdrop", 1.5), "'attn_pdrop' must be in [0, 1)"},
        };
        for (Object[] c : cases) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> read((ObjectNode) c[0]), (String) c[1]);
            assertTrue(e.getMessage().contains("config.json: ") && e.getMessage().contains((String) c[1]), e.getMessage());
            assertEquals(1, e.getMessage().lines().count(), e.getMessage());
        }
    }

    /** A missing tensor and an unexpected one name the tensor and the file. */
    @Test
    void missingAndUnexpectedTensorsAreNamed() throws Exception {
        var cpu = CpuBackend.get();
        ObjectNode json = DecoderModelTest.config("qwen2", false);
        DecoderConfig c = read(json);
        Path dir = c.file().getParent();
        Map<String, Tensor> tensors = new java.util.TreeMap<>();
        for (DecoderFamily.TensorSpec t : c.family().tensors(c)) tensors.put(t.name(), cpu.zeros(org.distill4j.core.DType.F32, t.shape()));
        Tensor bias = tensors.remove("model.layers.1.self_attn.k_proj.bias");
        Safetensors.write(dir.resolve("model.safetensors"), tensors, Map.of());
        IllegalArgumentException missing = assertThrows(IllegalArgumentException.class, () -> DecoderModel.load(cpu, dir));
        assertTrue(missing.getMessage().contains("'model.layers.1.self_attn.k_proj.bias' [4] is missing"), missing.getMessage());
        tensors.put("model.layers.1.self_attn.k_proj.bias", bias);
        tensors.put("model.layers.0.mlp.extra.weight", cpu.zeros(org.distill4j.core.DType.F32, 2));
        Safetensors.write(dir.resolve("model.safetensors"), tensors, Map.of());
        IllegalArgumentException unexpected = assertThrows(IllegalArgumentException.class, () -> DecoderModel.load(cpu, dir));
        assertTrue(unexpected.getMessage().contains("model.safetensors: unexpected tensor 'model.layers.0.mlp.extra.weight'"), unexpected.getMessage());
        tensors.values().forEach(Tensor::close);
    }
}
