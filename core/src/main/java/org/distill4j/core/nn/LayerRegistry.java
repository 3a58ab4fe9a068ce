package org.distill4j.core.nn;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.SortedSet;
import java.util.TreeSet;

/**
 * The layer types a {@link ModelSpec} may name: an immutable table from {@code "type"} to
 * {@link LayerKind}. {@link #standard()} holds the built-in MLP/CNN types; {@link #with} adds a
 * user-defined one without touching this package or any global state:
 *
 * <pre>{@code
 * LayerRegistry types = LayerRegistry.standard().with(MyLayer.KIND);
 * try (Model m = ModelSpec.parse("m.json", json, types).build(backend, seed)) { ... }
 * }</pre>
 */
public final class LayerRegistry {
    private static final LayerRegistry STANDARD = new LayerRegistry(Map.of()).withAll(List.of(
        Layers.Linear.KIND, Layers.Conv2d.KIND, Layers.BatchNorm.KIND_1D, Layers.BatchNorm.KIND_2D,
        Layers.Act.RELU, Layers.Act.LEAKY_RELU, Layers.Act.GELU, Layers.Act.TANH, Layers.Act.SIGMOID,
        Layers.Dropout.KIND, Layers.Pool.MAX_KIND, Layers.Pool.AVG_KIND, Layers.GlobalAvgPool.KIND,
        Layers.Flatten.KIND, Layers.Identity.KIND, Layers.Residual.KIND));

    private final Map<String, LayerKind> kinds;

    private LayerRegistry(Map<String, LayerKind> kinds) {
        this.kinds = kinds;
    }

    /** The built-in types of docs/model-spec.md. */
    public static LayerRegistry standard() {
        return STANDARD;
    }

    /** This table plus {@code kind}; a type name already present is an error (built-ins cannot be replaced by accident). */
    public LayerRegistry with(LayerKind kind) {
        if (kinds.containsKey(kind.type())) throw new IllegalArgumentException("layer type \"" + kind.type() + "\" is already registered");
        Map<String, LayerKind> m = new LinkedHashMap<>(kinds);
        m.put(kind.type(), kind);
        return new LayerRegistry(Collections.unmodifiableMap(m));
    }

    private LayerRegistry withAll(List<LayerKind> more) {
        LayerRegistry r = this;
        for (LayerKind k : more) r = r.with(k);
        return r;
    }

    public Optional<LayerKind> kind(String type) {
        return Optional.ofNullable(kinds.get(type));
    }

    /** The registered type names, sorted (for messages). */
    public SortedSet<String> types() {
        return Collections.unmodifiableSortedSet(new TreeSet<>(kinds.keySet()));
    }
}
