package org.distill4j.core.nn;

import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Set;
import org.distill4j.core.Tensor;

/**
 * A named tensor of a model, with PyTorch's state_dict name ("3.weight", "3.body.0.bias").
 * Trainable parameters have a gradient buffer (same shape, accumulated by backward passes);
 * buffers (batch norm's running statistics and num_batches_tracked) do not.
 */
public final class Parameter {
    private final String name;
    private final Tensor value;
    private final boolean trainable;
    private final Parameter root; // the layer's own Parameter this one renames, or null
    private Tensor grad;

    /**
     * A parameter ({@code trainable}: it gets a gradient buffer) or a buffer named {@code name}
     * (its state_dict name relative to the layer that owns it), holding {@code value}, which the
     * parameter then owns and closes.
     */
    public Parameter(String name, Tensor value, boolean trainable) {
        this(name, value, trainable, null);
    }

    private Parameter(String name, Tensor value, boolean trainable, Parameter root) {
        this.name = name;
        this.value = value;
        this.trainable = trainable;
        this.root = root;
    }

    /**
     * The parameters with each value tensor once, in order: a shared (tied) parameter listed under
     * several names keeps its first, so an optimizer, clipping or a checkpoint's optimizer state
     * sees it once (its one gradient buffer already holds every use's contribution).
     */
    public static List<Parameter> distinct(List<Parameter> parameters) {
        Set<Tensor> seen = Collections.newSetFromMap(new IdentityHashMap<>());
        List<Parameter> out = new ArrayList<>();
        for (Parameter p : parameters) if (seen.add(p.value())) out.add(p);
        return out;
    }

    public String name() { return name; }
    public Tensor value() { return value; }
    public boolean trainable() { return trainable; }

    /** The gradient buffer, allocated (zeroed) on first use; null for buffers. */
    public Tensor grad() {
        if (!trainable) return null;
        if (root != null) return root.grad(); // one gradient buffer, however many names lead to it
        if (grad == null) grad = value.backend().zeros(value.dtype(), value.shape());
        return grad;
    }

    Parameter renamed(String prefix) {
        return new Parameter(prefix + name, value, trainable, root != null ? root : this);
    }

    /** Frees the value and the gradient; the owning layer or model calls it (a renamed view leaves them to their owner). */
    public void close() {
        if (root != null) return; // the layer closes its own
        value.close();
        if (grad != null) grad.close();
    }
}
