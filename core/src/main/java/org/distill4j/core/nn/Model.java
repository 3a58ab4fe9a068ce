package org.distill4j.core.nn;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.distill4j.core.Tensor;
import org.distill4j.core.io.Safetensors;

/** A model built from a spec: the layers, their state_dict, and forward/backward over a batch. */
public final class Model implements AutoCloseable {
    private final ModelSpec spec;
    private final Layers.Sequential net;
    private final long[] output;
    private final List<Parameter> parameters;

    Model(ModelSpec spec, Layers.Sequential net, long[] output) {
        this.spec = spec;
        this.net = net;
        this.output = output;
        this.parameters = net.parameters();
    }

    public ModelSpec spec() { return spec; }
    Layers.Sequential net() { return net; }
    public long[] inputShape() { return spec.input().clone(); }
    public long[] outputShape() { return output.clone(); }

    /** Parameters and buffers, with PyTorch state_dict names, in module order. */
    public List<Parameter> parameters() { return parameters; }

    /** Number of trainable scalars (what PyTorch's sum(p.numel() for p in model.parameters()) gives). */
    public long parameterCount() {
        return parameters.stream().filter(Parameter::trainable).mapToLong(p -> p.value().numel()).sum();
    }

    public Tensor forward(Layer.Pass pass, Tensor x) {
        long[] expected = Layer.withBatch(x.rank() > 0 ? x.size(0) : 0, spec.input());
        if (!Arrays.equals(x.shape(), expected)) {
            throw new IllegalArgumentException("model " + spec.source() + ": input shape " + Arrays.toString(x.shape()) + ", expected [N, "
                + Arrays.toString(spec.input()).substring(1));
        }
        return net.forward(pass, x);
    }

    /** dL/dx from dL/dlogits, accumulating parameter gradients. */
    public Tensor backward(Layer.Pass pass, Tensor dy) {
        return backward(pass, dy, true);
    }

    /**
     * As {@link #backward(Layer.Pass, Tensor)}; with {@code inputGrad} false (training: nobody
     * needs dL/dx) input gradients stop once no earlier layer has parameters (the first linear or
     * convolution skips its dx gemm, as PyTorch does) and the result is null.
     */
    public Tensor backward(Layer.Pass pass, Tensor dy, boolean inputGrad) {
        List<Layer> layers = net.layers();
        Tensor g = dy;
        for (int i = layers.size() - 1; i >= 0 && g != null; i--) g = layers.get(i).backward(pass, g, inputGrad || needsInputGrad(i));
        return g;
    }

    /** Whether layer {@code i}'s input gradient reaches a parameter: some layer before it has trainable parameters. */
    private boolean needsInputGrad(int i) {
        for (int j = 0; j < i; j++) if (net.layers().get(j).parameters().stream().anyMatch(Parameter::trainable)) return true;
        return false;
    }

    /** Number of top-level layers (the indices a feature hint names). */
    public int layerCount() {
        return net.layers().size();
    }

    /** Output shape (without the batch dimension) of top-level layer {@code layer}, 0-based. */
    public long[] layerOutputShape(int layer) {
        checkLayer(layer);
        long[] shape = spec.input();
        for (int i = 0; i <= layer; i++) shape = net.layers().get(i).outputShape(shape);
        return shape;
    }

    private void checkLayer(int layer) {
        if (layer < 0 || layer >= net.layers().size()) {
            throw new IllegalArgumentException("model " + spec.source() + " has layers 0.." + (net.layers().size() - 1) + ", not " + layer);
        }
    }

    /**
     * Forward that also hands back, in {@code tapped[0]}, the output of top-level layer {@code tap}
     * (a tensor of the pass's arena; feature/hint distillation reads it).
     */
    public Tensor forward(Layer.Pass pass, Tensor x, int tap, Tensor[] tapped) {
        checkLayer(tap);
        Tensor h = forward(pass, x, 0, tap + 1);
        tapped[0] = h;
        return forward(pass, h, tap + 1, net.layers().size());
    }

    /**
     * Backward where {@code dTapped}, an extra dL/d(output of top-level layer {@code tap}), joins
     * the gradient flowing back from the layers after it (the hint term's gradient). For training:
     * input gradients are skipped as in {@code backward(pass, dy, false)}.
     */
    public Tensor backward(Layer.Pass pass, Tensor dy, int tap, Tensor dTapped) {
        checkLayer(tap);
        Tensor g = dy;
        List<Layer> layers = net.layers();
        for (int i = layers.size() - 1; i > tap; i--) g = layers.get(i).backward(pass, g, true);
        if (!Arrays.equals(g.shape(), dTapped.shape())) {
            throw new IllegalArgumentException("model " + spec.source() + ": the gradient for layer " + tap + " is " + Arrays.toString(dTapped.shape())
                + ", its output is " + Arrays.toString(g.shape()));
        }
        Tensor sum = pass.backend().empty(pass.arena(), g.dtype(), g.shape());
        pass.backend().add(g, dTapped, sum);
        g = sum;
        for (int i = tap; i >= 0 && g != null; i--) g = layers.get(i).backward(pass, g, needsInputGrad(i));
        return g;
    }

    private Tensor forward(Layer.Pass pass, Tensor x, int from, int to) {
        Tensor h = x;
        for (int i = from; i < to; i++) h = net.layers().get(i).forward(pass, h);
        return h;
    }

    /** True when a dropout layer with p > 0 is anywhere in the model (its mask depends on the step: not replayable as a graph). */
    public boolean hasDropout() {
        return net.hasDropout();
    }

    /**
     * Loads every parameter and buffer from a safetensors file (PyTorch's state_dict names and
     * layouts). Missing, unexpected and mis-shaped tensors are all listed in one error.
     */
    public void load(Path weights) throws IOException {
        try (Safetensors st = Safetensors.open(weights)) {
            List<String> problems = new ArrayList<>();
            Set<String> expected = new TreeSet<>();
            for (Parameter p : parameters) {
                expected.add(p.name());
                var e = st.entries().get(p.name());
                if (e == null) {
                    problems.add("missing " + p.name() + " " + p.value().dtype() + Arrays.toString(p.value().shape()));
                } else if (!e.dtype().equals(p.value().dtype().name()) || !Arrays.equals(e.shape(), p.value().shape())) {
                    problems.add(p.name() + " is " + e.dtype() + Arrays.toString(e.shape()) + ", the spec needs " + p.value().dtype()
                        + Arrays.toString(p.value().shape()));
                }
            }
            for (String name : st.entries().keySet()) if (!expected.contains(name)) problems.add("unexpected " + name);
            if (!problems.isEmpty()) {
                throw new IllegalArgumentException(weights + " does not match " + spec.source() + ": " + String.join("; ", problems));
            }
            for (Parameter p : parameters) st.copyInto(p.name(), p.value());
        }
    }

    /**
     * Loads every parameter and buffer from {@code st}, where each is stored under {@code prefix} +
     * its state_dict name; other entries are ignored (a checkpoint also holds optimizer state).
     */
    public void loadFrom(Safetensors st, String prefix) {
        List<String> problems = new ArrayList<>();
        for (Parameter p : parameters) {
            var e = st.entries().get(prefix + p.name());
            if (e == null) problems.add("missing " + prefix + p.name());
            else if (!e.dtype().equals(p.value().dtype().name()) || !Arrays.equals(e.shape(), p.value().shape())) {
                problems.add(prefix + p.name() + " is " + e.dtype() + Arrays.toString(e.shape()) + ", the model needs " + p.value().dtype()
                    + Arrays.toString(p.value().shape()));
            }
        }
        if (!problems.isEmpty()) throw new IllegalArgumentException(st.file() + " does not match " + spec.source() + ": " + String.join("; ", problems));
        for (Parameter p : parameters) st.copyInto(prefix + p.name(), p.value());
    }

    /** Saves every parameter and buffer as safetensors, loadable by PyTorch's load_state_dict(strict=True). */
    public void save(Path weights) throws IOException {
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Parameter p : parameters) tensors.put(p.name(), p.value());
        Safetensors.write(weights, tensors, Map.of("format", "pt"));
    }

    /** Zeroes every gradient buffer. */
    public void zeroGrad() {
        for (Parameter p : parameters) if (p.trainable()) p.value().backend().zero(p.grad());
    }

    @Override
    public void close() {
        net.close();
    }
}
