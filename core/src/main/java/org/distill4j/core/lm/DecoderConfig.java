package org.distill4j.core.lm;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;

/**
 * What a decoder-only transformer is, read from a Hugging Face {@code config.json} by its
 * {@link DecoderFamily}: sizes, the norm, positions, the MLP, biases, tying and dropout. Every
 * family reduces to these fields; the model code reads only them.
 *
 * @param file           the config.json this came from (named in every error)
 * @param json           the parsed config, written back unchanged (but for the dtype) by {@link HfCheckpoint#save}
 * @param headDim        per-head width; not always hidden / heads (Qwen3)
 * @param maxPositions   the context length (GPT-2's n_positions: the wpe rows, a hard limit)
 * @param intermediate   the MLP's hidden width
 * @param rope           rotary embedding, or null for learned positions (GPT-2)
 * @param slidingWindow  attention window in tokens, or 0 for none; longer sequences are refused
 * @param attnScaleByLayer GPT-2's scale_attn_by_inverse_layer_idx: scores of layer l also divided by l + 1
 * @param attnScale      GPT-2's scale_attn_weights: scores divided by sqrt(headDim) (true for every other family)
 */
public record DecoderConfig(Path file, ObjectNode json, DecoderFamily family, long vocab, long hidden, int layers, int heads, int kvHeads,
                            long headDim, long intermediate, long maxPositions, Norm norm, float normEps, Rope rope, Mlp mlp,
                            boolean qkvBias, boolean outBias, boolean mlpBias, boolean qkNorm, boolean tied, float embdDropout,
                            float attnDropout, float residDropout, long slidingWindow, boolean attnScale, boolean attnScaleByLayer) {

    /** LayerNorm with weight and bias (GPT-2) or RMSNorm with weight only (the llama family); both in fp32. */
    public enum Norm { LAYER_NORM, RMS_NORM }

    /** GPT-2's GELU with the tanh approximation (c_fc, c_proj) or SwiGLU (gate, up, down). */
    public enum Mlp { GELU_TANH, SWIGLU }

    /**
     * Rotary embedding over the full head width, HF's rotate_half pairing (i, i + headDim/2).
     *
     * @param type           "default", "linear" or "llama3"
     * @param factor         linear / llama3 scaling factor (1 for default)
     * @param lowFreqFactor  llama3 only
     * @param highFreqFactor llama3 only
     * @param originalMaxPositions llama3's original_max_position_embeddings
     */
    public record Rope(double theta, String type, double factor, double lowFreqFactor, double highFreqFactor, double originalMaxPositions) {
        /**
         * inv_freq[i] for i in [0, headDim/2), as transformers computes it (float32 values of
         * 1 / theta^(2i/d), then the type's rescaling), so cos/sin agree with its tables.
         */
        public float[] inverseFrequencies(long headDim) {
            int half = Math.toIntExact(headDim / 2);
            float[] inv = new float[half];
            for (int i = 0; i < half; i++) {
                float base = (float) (1.0 / Math.pow(theta, (float) (2.0 * i / headDim)));
                inv[i] = switch (type) {
                    case "default" -> base;
                    case "linear" -> (float) (base / factor);
                    case "llama3" -> llama3(base);
                    default -> throw new IllegalStateException("rope type " + type);
                };
            }
            return inv;
        }

        /** Llama 3.1's frequency-dependent scaling: long wavelengths divided by factor, short kept, a smooth blend between. */
        private float llama3(float invFreq) {
            double lowFreqWavelen = originalMaxPositions / lowFreqFactor;
            double highFreqWavelen = originalMaxPositions / highFreqFactor;
            double wavelen = 2 * Math.PI / invFreq;
            if (wavelen > lowFreqWavelen) return (float) (invFreq / factor);
            if (wavelen < highFreqWavelen) return invFreq;
            double smooth = (originalMaxPositions / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
            return (float) ((1 - smooth) * invFreq / factor + smooth * invFreq);
        }
    }

    private static final ObjectMapper JSON = new ObjectMapper();

    /** Reads {@code dir/config.json} and interprets it by its model_type. */
    public static DecoderConfig read(Path dir) throws IOException {
        Path file = dir.resolve("config.json");
        if (!Files.isDirectory(dir)) throw new IllegalArgumentException(dir + ": not a directory (a Hugging Face model folder)");
        JsonNode root;
        try {
            root = JSON.readTree(Files.readString(file));
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException(file + ": no such file (a Hugging Face model folder has config.json)");
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IllegalArgumentException(file + ": malformed JSON: " + e.getOriginalMessage());
        }
        if (root == null || !root.isObject()) throw new IllegalArgumentException(file + ": expected a JSON object");
        return of(file, (ObjectNode) root);
    }

    /** Interprets a config.json already read ({@code file} names it in messages). */
    public static DecoderConfig of(Path file, ObjectNode json) {
        ConfigReader r = new ConfigReader(file, json);
        return DecoderFamily.of(r).read(r);
    }

    /** The config.json key of the layer count: GPT-2's n_layer, the others' num_hidden_layers. */
    public String layersKey() {
        return family == DecoderFamily.GPT2 ? "n_layer" : "num_hidden_layers";
    }

    /**
     * This config with only the given layers (by index, in order): the layer count set to their
     * number and per-layer lists (transformers' layer_types) cut to match. The config of a
     * depth-pruned student (DistilBERT / Minitron) whose layers are copies of these.
     */
    public DecoderConfig withLayers(int[] keep) {
        if (keep.length == 0) throw new IllegalArgumentException(file + ": a model needs at least one layer");
        ObjectNode copy = json.deepCopy();
        copy.put(layersKey(), keep.length);
        if (copy.has("n_layers")) copy.put("n_layers", keep.length);
        JsonNode types = copy.get("layer_types");
        if (types != null && types.isArray()) {
            var cut = copy.putArray("layer_types");
            for (int l : keep) cut.add(types.get(l));
        }
        return of(file, copy);
    }

    /** Trainable scalars, counting a tied weight once. */
    public long parameterCount() {
        long n = 0;
        for (DecoderFamily.TensorSpec t : family.tensors(this)) n += t.numel();
        return n;
    }

    /** Refuses what this config cannot run: a sequence past GPT-2's learned positions or past a sliding window. */
    void checkSequenceLength(long length) {
        if (rope == null && length > maxPositions) {
            throw new IllegalArgumentException("sequence of " + length + " tokens is longer than " + file + " 'n_positions' = " + maxPositions
                + " (GPT-2's learned positions)");
        }
        if (slidingWindow > 0 && length > slidingWindow) {
            throw new IllegalArgumentException(file + ": 'sliding_window' = " + slidingWindow + " is shorter than the sequence of " + length
                + " tokens; sliding-window attention is not supported");
        }
    }

    /** Typed access to config keys; every failure is one line naming the file and the key. */
    static final class ConfigReader {
        final Path file;
        final ObjectNode json;

        ConfigReader(Path file, ObjectNode json) {
            this.file = file;
            this.json = json;
        }

        boolean has(String key) {
            return json.hasNonNull(key);
        }

        JsonNode node(String key) {
            return json.get(key);
        }

        IllegalArgumentException error(String key, String what) {
            return new IllegalArgumentException(file + ": '" + key + "' " + what);
        }

        long requiredLong(String key) {
            if (!has(key)) throw error(key, "is missing");
            return positiveLong(key, json.get(key));
        }

        long optionalLong(String key, long fallback) {
            return has(key) ? positiveLong(key, json.get(key)) : fallback;
        }

        private long positiveLong(String key, JsonNode v) {
            if (!v.isIntegralNumber() || v.asLong() < 1) throw error(key, "must be a positive integer, got " + v);
            return v.asLong();
        }

        int requiredInt(String key) {
            long v = requiredLong(key);
            if (v > Integer.MAX_VALUE) throw error(key, "is too large: " + v);
            return (int) v;
        }

        double optionalDouble(String key, double fallback) {
            return has(key) ? number(key, json.get(key)) : fallback;
        }

        double number(String key, JsonNode v) {
            if (!v.isNumber()) throw error(key, "must be a number, got " + v);
            return v.asDouble();
        }

        boolean optionalBoolean(String key, boolean fallback) {
            if (!has(key)) return fallback;
            if (!json.get(key).isBoolean()) throw error(key, "must be true or false, got " + json.get(key));
            return json.get(key).asBoolean();
        }

        String optionalString(String key, String fallback) {
            if (!has(key)) return fallback;
            if (!json.get(key).isTextual()) throw error(key, "must be a string, got " + json.get(key));
            return json.get(key).asText();
        }

        float dropout(String key, double fallback) {
            double p = optionalDouble(key, fallback);
            if (!(p >= 0 && p < 1)) throw error(key, "must be in [0, 1), got " + p);
            return (float) p;
        }

        /**
         * Rotary settings from either form: the newer {@code rope_parameters} object, or the older
         * top-level {@code rope_theta} plus {@code rope_scaling} (whose type key is rope_type or type).
         */
        Rope rope(double defaultTheta) {
            JsonNode scaling;
            String where;
            double theta;
            if (has("rope_parameters")) {
                scaling = json.get("rope_parameters");
                where = "rope_parameters";
                if (!scaling.isObject()) throw error(where, "must be an object, got " + scaling);
                theta = scaling.hasNonNull("rope_theta") ? number(where + ".rope_theta", scaling.get("rope_theta")) : optionalDouble("rope_theta", defaultTheta);
            } else {
                scaling = has("rope_scaling") ? json.get("rope_scaling") : null;
                where = "rope_scaling";
                if (scaling != null && !scaling.isObject()) throw error(where, "must be an object or null, got " + scaling);
                theta = optionalDouble("rope_theta", defaultTheta);
            }
            if (!(theta > 0)) throw error("rope_theta", "must be positive, got " + theta);
            String type = "default";
            if (scaling != null) {
                JsonNode t = scaling.hasNonNull("rope_type") ? scaling.get("rope_type") : scaling.get("type");
                if (t != null && !t.isNull()) type = t.asText();
            }
            String typeKey = where + ".rope_type";
            return switch (type) {
                case "default" -> new Rope(theta, type, 1, 0, 0, 0);
                case "linear" -> new Rope(theta, type, scalingNumber(scaling, where, "factor"), 0, 0, 0);
                case "llama3" -> new Rope(theta, type, scalingNumber(scaling, where, "factor"), scalingNumber(scaling, where, "low_freq_factor"),
                    scalingNumber(scaling, where, "high_freq_factor"), scalingNumber(scaling, where, "original_max_position_embeddings"));
                default -> throw error(typeKey, "is \"" + type + "\"; supported rope types: default, linear, llama3");
            };
        }

        private double scalingNumber(JsonNode scaling, String where, String key) {
            JsonNode v = scaling.get(key);
            if (v == null || v.isNull()) throw error(where + "." + key, "is missing");
            double d = number(where + "." + key, v);
            if (!(d > 0)) throw error(where + "." + key, "must be positive, got " + d);
            return d;
        }
    }
}
