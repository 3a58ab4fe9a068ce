package org.distill4j.core.lm;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import org.distill4j.core.lm.DecoderConfig.ConfigReader;
import org.distill4j.core.lm.DecoderConfig.Mlp;
import org.distill4j.core.lm.DecoderConfig.Norm;

/**
 * The table of supported Hugging Face decoder families, by config.json's {@code model_type}: how
 * each reads its config keys into a {@link DecoderConfig}, and how each names its tensors in a
 * checkpoint ({@link #layout}). Adding a family is adding an entry here; the model, the loader and
 * the writer only see the config and the layout.
 */
public enum DecoderFamily {
    GPT2("gpt2", "GPT2LMHeadModel") {
        @Override
        DecoderConfig read(ConfigReader r) {
            long hidden = r.requiredLong("n_embd");
            int heads = r.requiredInt("n_head");
            if (hidden % heads != 0) throw r.error("n_embd", "= " + hidden + " is not a multiple of 'n_head' = " + heads);
            String act = r.optionalString("activation_function", "gelu_new");
            if (!act.equals("gelu_new") && !act.equals("gelu_pytorch_tanh")) {
                throw r.error("activation_function", "is \"" + act + "\"; supported: gelu_new, gelu_pytorch_tanh (GELU with tanh)");
            }
            if (r.optionalBoolean("add_cross_attention", false)) throw r.error("add_cross_attention", "is true; only decoder-only GPT-2 is supported");
            return new DecoderConfig(r.file, r.json, this, r.requiredLong("vocab_size"), hidden, r.requiredInt("n_layer"), heads, heads,
                hidden / heads, r.optionalLong("n_inner", 4 * hidden), r.requiredLong("n_positions"), Norm.LAYER_NORM,
                (float) r.optionalDouble("layer_norm_epsilon", 1e-5), null, Mlp.GELU_TANH, true, true, true, false,
                r.optionalBoolean("tie_word_embeddings", true), r.dropout("embd_pdrop", 0.1), r.dropout("attn_pdrop", 0.1),
                r.dropout("resid_pdrop", 0.1), 0, r.optionalBoolean("scale_attn_weights", true),
                r.optionalBoolean("scale_attn_by_inverse_layer_idx", false));
        }

        @Override
        Layout layout(DecoderConfig c) {
            long d = c.hidden(), inner = c.intermediate();
            List<LayerNames> layers = new ArrayList<>();
            for (int l = 0; l < c.layers(); l++) {
                String p = "transformer.h." + l + ".";
                layers.add(new LayerNames(p + "ln_1.weight", p + "ln_1.bias",
                    List.of(new Projection(p + "attn.c_attn.weight", p + "attn.c_attn.bias", d, 3 * d, true)),
                    new Projection(p + "attn.c_proj.weight", p + "attn.c_proj.bias", d, d, true), null, null,
                    p + "ln_2.weight", p + "ln_2.bias",
                    List.of(new Projection(p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", d, inner, true)),
                    new Projection(p + "mlp.c_proj.weight", p + "mlp.c_proj.bias", inner, d, true)));
            }
            return new Layout("transformer.wte.weight", "transformer.wpe.weight", layers, "transformer.ln_f.weight", "transformer.ln_f.bias",
                c.tied() ? null : "lm_head.weight", "transformer.");
        }

        @Override
        boolean isBuffer(String key) {
            // Old checkpoints store the causal mask and its fill value; transformers ignores them.
            return key.endsWith(".attn.bias") || key.endsWith(".attn.masked_bias");
        }
    },
    LLAMA("llama", "LlamaForCausalLM"),
    MISTRAL("mistral", "MistralForCausalLM"),
    QWEN2("qwen2", "Qwen2ForCausalLM"),
    QWEN3("qwen3", "Qwen3ForCausalLM");

    /** A weight [out, in] (nn.Linear) or [in, out] (GPT-2's Conv1D, {@code storedInOut}) with an optional bias [out]. */
    public record Projection(String weight, String bias, long in, long out, boolean storedInOut) {
        long[] weightShape() {
            return storedInOut ? new long[] {in, out} : new long[] {out, in};
        }
    }

    /**
     * The tensor names of one block. {@code qkv}: the projections whose outputs, side by side, are
     * [q | k | v] (GPT-2's one c_attn, or q_proj, k_proj, v_proj); {@code mlpIn}: c_fc, or
     * gate_proj then up_proj. Null names: absent (biases of RMSNorm, q/k norms outside Qwen3).
     */
    public record LayerNames(String attnNormWeight, String attnNormBias, List<Projection> qkv, Projection attnOut, String qNorm, String kNorm,
                             String mlpNormWeight, String mlpNormBias, List<Projection> mlpIn, Projection mlpOut) {}

    /**
     * Every tensor name of a checkpoint. {@code positions} is null with RoPE, {@code lmHead} null
     * when tied to {@code embedding}. {@code optionalPrefix}: a prefix some checkpoints of the
     * family omit (GPT-2 on the hub: "wte.weight" for "transformer.wte.weight"), or null.
     */
    public record Layout(String embedding, String positions, List<LayerNames> layers, String finalNormWeight, String finalNormBias, String lmHead,
                         String optionalPrefix) {}

    /** A tensor the model expects, with its shape. */
    public record TensorSpec(String name, long[] shape) {
        long numel() {
            long n = 1;
            for (long d : shape) n *= d;
            return n;
        }

        @Override
        public String toString() {
            return name + Arrays.toString(shape);
        }
    }

    private final String modelType;
    private final String architecture;

    DecoderFamily(String modelType, String architecture) {
        this.modelType = modelType;
        this.architecture = architecture;
    }

    /** config.json's model_type. */
    public String modelType() { return modelType; }

    /** The transformers class save_pretrained names in "architectures". */
    public String architecture() { return architecture; }

    static DecoderFamily of(ConfigReader r) {
        if (!r.has("model_type")) throw r.error("model_type", "is missing");
        String type = r.optionalString("model_type", "");
        for (DecoderFamily f : values()) if (f.modelType.equals(type)) return f;
        List<String> known = Arrays.stream(values()).map(DecoderFamily::modelType).toList();
        throw r.error("model_type", "is \"" + type + "\"; supported decoder families: " + String.join(", ", known));
    }

    /**
     * The llama layout and its relatives. They differ only in defaults and switches: Qwen2 has
     * q/k/v biases, Qwen3 per-head q/k RMSNorm (and optional biases on all four attention
     * projections, as llama's attention_bias), Mistral and the Qwens a sliding window.
     */
    DecoderConfig read(ConfigReader r) {
        long hidden = r.requiredLong("hidden_size");
        int heads = r.requiredInt("num_attention_heads");
        int kvHeads = (int) r.optionalLong("num_key_value_heads", heads);
        if (heads % kvHeads != 0) throw r.error("num_key_value_heads", "= " + kvHeads + " does not divide 'num_attention_heads' = " + heads);
        long headDim = r.optionalLong("head_dim", this == QWEN3 ? 128 : hidden / heads);
        if (headDim % 2 != 0) throw r.error("head_dim", "= " + headDim + " must be even for rotary embeddings");
        String act = r.optionalString("hidden_act", "silu");
        if (!act.equals("silu")) throw r.error("hidden_act", "is \"" + act + "\"; supported: silu (SwiGLU)");
        double partial = r.optionalDouble("partial_rotary_factor", 1.0);
        if (partial != 1.0) throw r.error("partial_rotary_factor", "= " + partial + "; only full rotary embeddings are supported");
        boolean attentionBias = r.optionalBoolean("attention_bias", false);
        boolean qkvBias = this == QWEN2 || attentionBias;
        boolean outBias = this != QWEN2 && attentionBias;
        long window = 0;
        if (this == MISTRAL || ((this == QWEN2 || this == QWEN3) && r.optionalBoolean("use_sliding_window", false))) {
            window = r.has("sliding_window") ? r.optionalLong("sliding_window", 0) : 0;
        }
        return new DecoderConfig(r.file, r.json, this, r.requiredLong("vocab_size"), hidden, r.requiredInt("num_hidden_layers"), heads, kvHeads,
            headDim, r.requiredLong("intermediate_size"), r.requiredLong("max_position_embeddings"), Norm.RMS_NORM,
            (float) r.optionalDouble("rms_norm_eps", 1e-6), r.rope(10000.0), Mlp.SWIGLU, qkvBias, outBias,
            this == LLAMA && r.optionalBoolean("mlp_bias", false), this == QWEN3, r.optionalBoolean("tie_word_embeddings", false), 0,
            r.dropout("attention_dropout", 0.0), 0, window, true, false);
    }

    Layout layout(DecoderConfig c) {
        long d = c.hidden(), q = c.heads() * c.headDim(), kv = c.kvHeads() * c.headDim(), inner = c.intermediate();
        List<LayerNames> layers = new ArrayList<>();
        for (int l = 0; l < c.layers(); l++) {
            String p = "model.layers." + l + ".", a = p + "self_attn.", m = p + "mlp.";
            layers.add(new LayerNames(p + "input_layernorm.weight", null,
                List.of(linear(a + "q_proj", d, q, c.qkvBias()), linear(a + "k_proj", d, kv, c.qkvBias()), linear(a + "v_proj", d, kv, c.qkvBias())),
                linear(a + "o_proj", q, d, c.outBias()), c.qkNorm() ? a + "q_norm.weight" : null, c.qkNorm() ? a + "k_norm.weight" : null,
                p + "post_attention_layernorm.weight", null,
                List.of(linear(m + "gate_proj", d, inner, c.mlpBias()), linear(m + "up_proj", d, inner, c.mlpBias())),
                linear(m + "down_proj", inner, d, c.mlpBias())));
        }
        return new Layout("model.embed_tokens.weight", null, layers, "model.norm.weight", null, c.tied() ? null : "lm_head.weight", null);
    }

    private static Projection linear(String name, long in, long out, boolean bias) {
        return new Projection(name + ".weight", bias ? name + ".bias" : null, in, out, false);
    }

    /** Keys a checkpoint may carry that are not parameters (ignored on load, never written). */
    boolean isBuffer(String key) {
        return key.endsWith(".rotary_emb.inv_freq");
    }

    /** Every parameter of a model of this config, in module order, a tied weight once (under the embedding's name). */
    List<TensorSpec> tensors(DecoderConfig c) {
        Layout l = layout(c);
        long d = c.hidden();
        List<TensorSpec> out = new ArrayList<>();
        out.add(new TensorSpec(l.embedding(), new long[] {c.vocab(), d}));
        if (l.positions() != null) out.add(new TensorSpec(l.positions(), new long[] {c.maxPositions(), d}));
        for (LayerNames n : l.layers()) {
            addNorm(out, n.attnNormWeight(), n.attnNormBias(), d);
            for (Projection p : n.qkv()) addProjection(out, p);
            if (n.qNorm() != null) out.add(new TensorSpec(n.qNorm(), new long[] {c.headDim()}));
            if (n.kNorm() != null) out.add(new TensorSpec(n.kNorm(), new long[] {c.headDim()}));
            addProjection(out, n.attnOut());
            addNorm(out, n.mlpNormWeight(), n.mlpNormBias(), d);
            for (Projection p : n.mlpIn()) addProjection(out, p);
            addProjection(out, n.mlpOut());
        }
        addNorm(out, l.finalNormWeight(), l.finalNormBias(), d);
        if (l.lmHead() != null) out.add(new TensorSpec(l.lmHead(), new long[] {c.vocab(), d}));
        return out;
    }

    private static void addNorm(List<TensorSpec> out, String weight, String bias, long d) {
        out.add(new TensorSpec(weight, new long[] {d}));
        if (bias != null) out.add(new TensorSpec(bias, new long[] {d}));
    }

    private static void addProjection(List<TensorSpec> out, Projection p) {
        out.add(new TensorSpec(p.weight(), p.weightShape()));
        if (p.bias() != null) out.add(new TensorSpec(p.bias(), new long[] {p.out()}));
    }

    @Override
    public String toString() {
        return name().toLowerCase(Locale.ROOT);
    }
}
