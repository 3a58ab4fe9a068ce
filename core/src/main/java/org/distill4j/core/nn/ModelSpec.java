package org.distill4j.core.nn;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.PoolMode;

/**
 * A model spec (docs/model-spec.md): an input shape and an nn.Sequential-like list of layers, in
 * JSON. Parsing checks every type and key and that shapes chain, before any memory is allocated,
 * and names the layer and the numbers when they do not.
 */
public record ModelSpec(String source, long[] input, JsonNode layers) {
    private static final ObjectMapper JSON = new ObjectMapper();

    private static final Map<String, Set<String>> KEYS = Map.ofEntries(
        Map.entry("linear", Set.of("in", "out", "bias")),
        Map.entry("conv2d", Set.of("in", "out", "kernel", "stride", "padding", "bias")),
        Map.entry("batchnorm1d", Set.of("features", "eps", "momentum")),
        Map.entry("batchnorm2d", Set.of("features", "eps", "momentum")),
        Map.entry("relu", Set.of()), Map.entry("tanh", Set.of()), Map.entry("sigmoid", Set.of()),
        Map.entry("flatten", Set.of()), Map.entry("identity", Set.of()),
        Map.entry("leakyrelu", Set.of("slope")),
        Map.entry("gelu", Set.of("approximate")),
        Map.entry("dropout", Set.of("p")),
        Map.entry("maxpool2d", Set.of("kernel", "stride", "padding")),
        Map.entry("avgpool2d", Set.of("kernel", "stride", "padding")),
        Map.entry("adaptiveavgpool2d", Set.of("output")),
        Map.entry("residual", Set.of("body", "shortcut")));

    /** Reads and checks a spec file (shapes are checked by {@link #build}, which {@code distill info} also runs). */
    public static ModelSpec read(Path file) throws IOException {
        String text;
        try {
            text = Files.readString(file);
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException(file + ": no such file");
        } catch (java.nio.charset.CharacterCodingException e) {
            throw new IllegalArgumentException(file + ": not UTF-8 text (a model spec is a JSON file)");
        }
        return parse(file.toString(), text);
    }

    public static ModelSpec parse(String source, String text) {
        JsonNode root;
        try {
            root = JSON.readTree(text);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException(source + ": malformed JSON at line " + e.getLocation().getLineNr() + ", column "
                + e.getLocation().getColumnNr() + ": " + e.getOriginalMessage());
        }
        if (root == null || !root.isObject()) throw new IllegalArgumentException(source + ": expected a JSON object with \"input\" and \"layers\"");
        for (Iterator<String> it = root.fieldNames(); it.hasNext(); ) {
            String k = it.next();
            if (!k.equals("input") && !k.equals("layers")) throw new IllegalArgumentException(source + ": unknown top-level key \"" + k + "\" (expected input, layers)");
        }
        JsonNode in = root.get("input"), layers = root.get("layers");
        if (in == null || !in.isArray() || in.isEmpty()) throw new IllegalArgumentException(source + ": \"input\" must be a non-empty array of dimensions, e.g. [1, 28, 28]");
        long[] input = new long[in.size()];
        for (int i = 0; i < input.length; i++) {
            if (!in.get(i).canConvertToLong() || in.get(i).asLong() < 1) throw new IllegalArgumentException(source + ": \"input\"[" + i + "] must be a positive integer");
            input[i] = in.get(i).asLong();
        }
        if (layers == null || !layers.isArray() || layers.isEmpty()) throw new IllegalArgumentException(source + ": \"layers\" must be a non-empty array");
        checkLayers(source, "layers", layers);
        return new ModelSpec(source, input, layers);
    }

    private static void checkLayers(String source, String path, JsonNode layers) {
        for (int i = 0; i < layers.size(); i++) {
            JsonNode l = layers.get(i);
            String where = source + ": " + path + "[" + i + "]";
            if (!l.isObject() || !l.has("type") || !l.get("type").isTextual()) throw new IllegalArgumentException(where + ": each layer needs a \"type\"");
            String type = l.get("type").asText();
            Set<String> keys = KEYS.get(type);
            if (keys == null) throw new IllegalArgumentException(where + ": unknown layer type \"" + type + "\" (known: " + String.join(", ", new java.util.TreeSet<>(KEYS.keySet())) + ")");
            for (Iterator<String> it = l.fieldNames(); it.hasNext(); ) {
                String k = it.next();
                if (!k.equals("type") && !keys.contains(k)) {
                    throw new IllegalArgumentException(where + " (" + type + "): unknown key \"" + k + "\" (allowed: " + String.join(", ", new java.util.TreeSet<>(keys)) + ")");
                }
            }
            if (type.equals("residual")) {
                if (!l.has("body") || !l.get("body").isArray() || l.get("body").isEmpty()) throw new IllegalArgumentException(where + " (residual): \"body\" must be a non-empty array");
                checkLayers(source, path + "[" + i + "].body", l.get("body"));
                if (l.has("shortcut")) checkLayers(source, path + "[" + i + "].shortcut", l.get("shortcut"));
            }
        }
    }

    /** Builds the model on {@code backend}, initialised as PyTorch would (Kaiming-uniform) from {@code seed}. */
    public Model build(Backend backend, long seed) {
        long[] counter = {seed, 0}; // [initialisation stream, layer position]
        Layers.Sequential net;
        try {
            net = sequential(backend, layers, "layers", counter);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException(source + ": " + e.getMessage(), e);
        }
        long[] output;
        try {
            output = net.outputShape(input);
        } catch (IllegalArgumentException e) {
            net.close();
            throw new IllegalArgumentException(source + ": " + e.getMessage(), e);
        }
        return new Model(this, net, output);
    }

    private static Layers.Sequential sequential(Backend b, JsonNode layers, String path, long[] counter) {
        List<Layer> out = new ArrayList<>();
        try {
            for (int i = 0; i < layers.size(); i++) out.add(layer(b, layers.get(i), path + "[" + i + "]", counter));
        } catch (RuntimeException e) {
            out.forEach(Layer::close);
            throw e;
        }
        return new Layers.Sequential(out);
    }

    private static Layer layer(Backend b, JsonNode l, String where, long[] counter) {
        String type = l.get("type").asText();
        long seed = counter[0]++ * 0x9E3779B97F4A7C15L + 17;
        long position = counter[1]++; // dropout masks depend on the layer's position, not on the init seed
        return switch (type) {
            case "linear" -> new Layers.Linear(b, positive(l, "in", where), positive(l, "out", where), bool(l, "bias", true, where), seed);
            case "conv2d" -> new Layers.Conv2d(b, positive(l, "in", where), positive(l, "out", where), positive(l, "kernel", where),
                (int) positiveOr(l, "stride", 1, where), (int) nonNegative(l, "padding", 0, where), bool(l, "bias", true, where), seed);
            case "batchnorm1d", "batchnorm2d" -> new Layers.BatchNorm(b, positive(l, "features", where), (float) number(l, "eps", 1e-5, where),
                (float) number(l, "momentum", 0.1, where), type.equals("batchnorm2d"));
            case "relu" -> new Layers.Act(Activation.RELU, 0);
            case "leakyrelu" -> new Layers.Act(Activation.LEAKY_RELU, (float) number(l, "slope", 0.01, where));
            case "gelu" -> {
                String approx = l.has("approximate") ? l.get("approximate").asText() : "none";
                if (!approx.equals("none") && !approx.equals("tanh")) throw new IllegalArgumentException(where + " (gelu): \"approximate\" must be \"none\" or \"tanh\", got \"" + approx + "\"");
                yield new Layers.Act(approx.equals("tanh") ? Activation.GELU_TANH : Activation.GELU, 0);
            }
            case "tanh" -> new Layers.Act(Activation.TANH, 0);
            case "sigmoid" -> new Layers.Act(Activation.SIGMOID, 0);
            case "dropout" -> {
                double p = number(l, "p", 0.5, where);
                if (!(p >= 0 && p < 1)) throw new IllegalArgumentException(where + " (dropout): \"p\" must be in [0, 1), got " + p);
                yield new Layers.Dropout((float) p, position + 1);
            }
            case "maxpool2d", "avgpool2d" -> {
                long k = positive(l, "kernel", where);
                yield new Layers.Pool(type.equals("maxpool2d") ? PoolMode.MAX : PoolMode.AVG, (int) k, (int) positiveOr(l, "stride", k, where),
                    (int) nonNegative(l, "padding", 0, where));
            }
            case "adaptiveavgpool2d" -> {
                if (l.has("output") && l.get("output").asLong() != 1) throw new IllegalArgumentException(where + " (adaptiveavgpool2d): only \"output\": 1 is supported");
                yield new Layers.GlobalAvgPool();
            }
            case "flatten" -> new Layers.Flatten();
            case "identity" -> new Layers.Identity();
            case "residual" -> new Layers.Residual(sequential(b, l.get("body"), where + ".body", counter),
                l.has("shortcut") && !l.get("shortcut").isEmpty() ? sequential(b, l.get("shortcut"), where + ".shortcut", counter) : null);
            default -> throw new IllegalStateException("checked in parse: " + type);
        };
    }

    private static long positive(JsonNode l, String key, String where) {
        if (!l.has(key)) throw new IllegalArgumentException(where + " (" + l.get("type").asText() + "): missing \"" + key + "\"");
        return positiveOr(l, key, 0, where);
    }

    private static long positiveOr(JsonNode l, String key, long dflt, String where) {
        if (!l.has(key)) return dflt;
        JsonNode v = l.get(key);
        if (!v.canConvertToLong() || !v.isIntegralNumber() || v.asLong() < 1) {
            throw new IllegalArgumentException(where + " (" + l.get("type").asText() + "): \"" + key + "\" must be a positive integer, got " + v);
        }
        return v.asLong();
    }

    private static long nonNegative(JsonNode l, String key, long dflt, String where) {
        if (!l.has(key)) return dflt;
        JsonNode v = l.get(key);
        if (!v.isIntegralNumber() || v.asLong() < 0) throw new IllegalArgumentException(where + " (" + l.get("type").asText() + "): \"" + key + "\" must be an integer >= 0, got " + v);
        return v.asLong();
    }

    private static double number(JsonNode l, String key, double dflt, String where) {
        if (!l.has(key)) return dflt;
        JsonNode v = l.get(key);
        if (!v.isNumber()) throw new IllegalArgumentException(where + " (" + l.get("type").asText() + "): \"" + key + "\" must be a number, got " + v);
        return v.asDouble();
    }

    private static boolean bool(JsonNode l, String key, boolean dflt, String where) {
        if (!l.has(key)) return dflt;
        JsonNode v = l.get(key);
        if (!v.isBoolean()) throw new IllegalArgumentException(where + " (" + l.get("type").asText() + "): \"" + key + "\" must be true or false, got " + v);
        return v.asBoolean();
    }
}
