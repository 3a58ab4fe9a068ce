package org.distill4j.core.nn;

import java.util.Set;

/**
 * One layer type of a model spec (docs/model-spec.md): its {@code "type"} name, the JSON keys it
 * accepts, and how it builds its {@link Layer} from them. Everything else about the type lives in
 * the Layer itself: its output shape, its parameters, its forward and backward, whether it has
 * dropout ({@link Layer#hasDropout()}) and how an {@link InferencePlan} runs it
 * ({@link Layer#compileInference}). Adding a layer type is therefore one class and one kind,
 * registered with {@link LayerRegistry#with(LayerKind)}; the built-in kinds are the
 * {@code KIND} fields of the classes in {@link Layers}.
 */
public interface LayerKind {
    /** The spec's {@code "type"}, e.g. "linear". */
    String type();

    /** The keys a layer of this type may have besides "type"; any other key is an error naming these. */
    Set<String> keys();

    /**
     * Those of {@link #keys()} whose values are arrays of layers (a residual's body and shortcut):
     * parsing checks their layers recursively; {@link LayerArgs#layers} builds them.
     */
    default Set<String> layerLists() {
        return Set.of();
    }

    /** Builds the layer from its checked keys (read through {@code args}, which names the layer in errors). */
    Layer build(LayerArgs args);

    /** What {@link LayerKind#build} does. */
    @FunctionalInterface
    interface Factory {
        Layer build(LayerArgs args);
    }

    /** A kind with plain keys. */
    static LayerKind of(String type, Set<String> keys, Factory factory) {
        return of(type, keys, Set.of(), factory);
    }

    /** A kind some of whose keys ({@code layerLists}, a subset of {@code keys}) hold nested layers. */
    static LayerKind of(String type, Set<String> keys, Set<String> layerLists, Factory factory) {
        if (type == null || type.isEmpty() || type.equals("type")) throw new IllegalArgumentException("a layer kind needs a name, got \"" + type + "\"");
        if (keys.contains("type")) throw new IllegalArgumentException("layer kind " + type + ": \"type\" is not one of its own keys");
        if (!keys.containsAll(layerLists)) throw new IllegalArgumentException("layer kind " + type + ": layer lists " + layerLists + " must be among its keys " + keys);
        Set<String> k = Set.copyOf(keys), l = Set.copyOf(layerLists);
        return new LayerKind() {
            @Override public String type() { return type; }
            @Override public Set<String> keys() { return k; }
            @Override public Set<String> layerLists() { return l; }
            @Override public Layer build(LayerArgs args) { return factory.build(args); }
            @Override public String toString() { return "LayerKind " + type; }
        };
    }
}
