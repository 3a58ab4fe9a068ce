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
import java.util.Set;
import org.distill4j.core.Backend;

/**
 * A model spec (docs/model-spec.md): an input shape and an nn.Sequential-like list of layers, in
 * JSON. Parsing checks every type and key and that shapes chain, before any memory is allocated,
 * and names the layer and the numbers when they do not. The layer types are those of a
 * {@link LayerRegistry}: {@link LayerRegistry#standard()} unless another is given.
 */
public record ModelSpec(String source, long[] input, JsonNode layers, LayerRegistry registry) {
    private static final ObjectMapper JSON = new ObjectMapper();

    /** Reads and checks a spec file (shapes are checked by {@link #build}, which {@code distill info} also runs). */
    public static ModelSpec read(Path file) throws IOException {
        return read(file, LayerRegistry.standard());
    }

    /** As {@link #read(Path)}, with the layer types of {@code registry}. */
    public static ModelSpec read(Path file, LayerRegistry registry) throws IOException {
        String text;
        try {
            text = Files.readString(file);
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException(file + ": no such file");
        } catch (java.nio.charset.CharacterCodingException e) {
            throw new IllegalArgumentException(file + ": not UTF-8 text (a model spec is a JSON file)");
        }
        return parse(file.toString(), text, registry);
    }

    public static ModelSpec parse(String source, String text) {
        return parse(source, text, LayerRegistry.standard());
    }

    /** Parses and checks a spec whose layer types are those of {@code registry}. */
    public static ModelSpec parse(String source, String text, LayerRegistry registry) {
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
        checkLayers(registry, source, "layers", layers);
        return new ModelSpec(source, input, layers, registry);
    }

    private static void checkLayers(LayerRegistry registry, String source, String path, JsonNode layers) {
        for (int i = 0; i < layers.size(); i++) {
            JsonNode l = layers.get(i);
            String where = source + ": " + path + "[" + i + "]";
            if (!l.isObject() || !l.has("type") || !l.get("type").isTextual()) throw new IllegalArgumentException(where + ": each layer needs a \"type\"");
            String type = l.get("type").asText();
            LayerKind kind = registry.kind(type).orElseThrow(() -> new IllegalArgumentException(where + ": unknown layer type \"" + type + "\" (known: "
                + String.join(", ", registry.types()) + ")"));
            Set<String> keys = kind.keys();
            for (Iterator<String> it = l.fieldNames(); it.hasNext(); ) {
                String k = it.next();
                if (!k.equals("type") && !keys.contains(k)) {
                    throw new IllegalArgumentException(where + " (" + type + "): unknown key \"" + k + "\" (allowed: " + String.join(", ", new java.util.TreeSet<>(keys)) + ")");
                }
            }
            for (String list : new java.util.TreeSet<>(kind.layerLists())) {
                if (!l.has(list)) continue;
                if (!l.get(list).isArray()) throw new IllegalArgumentException(where + " (" + type + "): \"" + list + "\" must be an array of layers");
                checkLayers(registry, source, path + "[" + i + "]." + list, l.get(list));
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

    private Layers.Sequential sequential(Backend b, JsonNode layers, String path, long[] counter) {
        List<Layer> out = new ArrayList<>();
        try {
            for (int i = 0; i < layers.size(); i++) out.add(layer(b, layers.get(i), path + "[" + i + "]", counter));
        } catch (RuntimeException e) {
            out.forEach(Layer::close);
            throw e;
        }
        return new Layers.Sequential(out);
    }

    private Layer layer(Backend b, JsonNode l, String where, long[] counter) {
        LayerKind kind = registry.kind(l.get("type").asText()).orElseThrow(() -> new IllegalStateException("checked in parse: " + l.get("type")));
        long seed = counter[0]++ * 0x9E3779B97F4A7C15L + 17;
        long position = counter[1]++; // dropout masks depend on the layer's position, not on the init seed
        return kind.build(new LayerArgs(b, l, where, seed, position, (nested, at) -> sequential(b, nested, at, counter)));
    }
}
