package org.distill4j.core.nn;

import com.fasterxml.jackson.databind.JsonNode;
import org.distill4j.core.Backend;

/**
 * What a {@link LayerKind} builds its layer from: the layer's JSON keys (already checked against
 * {@link LayerKind#keys()}), read through typed accessors whose errors name the layer
 * ({@code "layers[3] (linear): \"in\" must be a positive integer, got -1"}), plus the backend,
 * the layer's initialisation seed and its position in the model (what dropout masks depend on).
 */
public final class LayerArgs {
    /** Builds a nested layer list (ModelSpec's own recursion, so seeds and positions keep counting in spec order). */
    interface Nested {
        Layers.Sequential build(JsonNode layers, String where);
    }

    private final Backend backend;
    private final JsonNode node;
    private final String where, type;
    private final long seed, position;
    private final Nested nested;

    LayerArgs(Backend backend, JsonNode node, String where, long seed, long position, Nested nested) {
        this.backend = backend;
        this.node = node;
        this.where = where;
        this.type = node.get("type").asText();
        this.seed = seed;
        this.position = position;
        this.nested = nested;
    }

    public Backend backend() { return backend; }

    /** The layer's "type". */
    public String type() { return type; }

    /** Where the layer is in the spec, e.g. "layers[2].body[0]". */
    public String where() { return where; }

    /** The seed this layer's parameters are initialised from (each layer its own, in spec order). */
    public long seed() { return seed; }

    /** The layer's 0-based position among all layers of the spec, nested ones included, in spec order. */
    public long position() { return position; }

    public boolean has(String key) {
        return node.has(key);
    }

    /** An error naming this layer: {@code where (type): message}. */
    public IllegalArgumentException error(String message) {
        return new IllegalArgumentException(where + " (" + type + "): " + message);
    }

    /** A required positive integer. */
    public long positive(String key) {
        if (!node.has(key)) throw error("missing \"" + key + "\"");
        return positive(key, 0);
    }

    /** A positive integer, {@code dflt} when absent. */
    public long positive(String key, long dflt) {
        if (!node.has(key)) return dflt;
        JsonNode v = node.get(key);
        if (!v.canConvertToLong() || !v.isIntegralNumber() || v.asLong() < 1) throw error("\"" + key + "\" must be a positive integer, got " + v);
        return v.asLong();
    }

    /** An integer >= 0, {@code dflt} when absent. */
    public long nonNegative(String key, long dflt) {
        if (!node.has(key)) return dflt;
        JsonNode v = node.get(key);
        if (!v.isIntegralNumber() || v.asLong() < 0) throw error("\"" + key + "\" must be an integer >= 0, got " + v);
        return v.asLong();
    }

    /** A number, {@code dflt} when absent. */
    public double number(String key, double dflt) {
        if (!node.has(key)) return dflt;
        JsonNode v = node.get(key);
        if (!v.isNumber()) throw error("\"" + key + "\" must be a number, got " + v);
        return v.asDouble();
    }

    /** true or false, {@code dflt} when absent. */
    public boolean bool(String key, boolean dflt) {
        if (!node.has(key)) return dflt;
        JsonNode v = node.get(key);
        if (!v.isBoolean()) throw error("\"" + key + "\" must be true or false, got " + v);
        return v.asBoolean();
    }

    /** The raw JSON value of {@code key} (null when absent), for values the typed accessors do not cover. */
    public JsonNode value(String key) {
        return node.get(key);
    }

    /** The value as text (a string, or a number's text), {@code dflt} when absent. */
    public String text(String key, String dflt) {
        return node.has(key) ? node.get(key).asText() : dflt;
    }

    /**
     * The layers under {@code key} (one of the kind's {@link LayerKind#layerLists()}) as a
     * sequential block named as PyTorch names nn.Sequential children; null when the key is absent.
     */
    public Layers.Sequential layers(String key) {
        if (!node.has(key)) return null;
        return nested.build(node.get(key), where + "." + key);
    }
}
