package org.distill4j.core.nn;

import java.lang.foreign.Arena;
import java.util.List;
import org.distill4j.core.Backend;
import org.distill4j.core.Tensor;

/**
 * A layer with an explicit forward and backward (no general autograd). In training mode forward
 * keeps what backward needs; in eval mode (teachers, inference) it keeps nothing. Activations and
 * input gradients are allocated in the pass's arena, which the caller closes after the step;
 * parameter gradients accumulate into {@link Parameter#grad()}.
 *
 * <p>Shapes exclude the batch dimension: a layer maps input [N, ...in] to [N, ...out].
 */
public abstract class Layer implements AutoCloseable {
    /** Per-pass state: backend, the arena activations live in, train/eval, and the dropout stream. */
    public record Pass(Backend backend, Arena arena, boolean train, long seed, long step) {}

    /**
     * For the layer classes in this package and for user-defined layers. A user-defined layer
     * can own parameters ({@link Parameter}'s constructor is public) and run its forward and
     * backward on any backend; what it cannot do yet is sit in a {@link Model}, which is built
     * from a {@link ModelSpec} whose layer types are this package's own.
     */
    protected Layer() {}

    /** Output shape without the batch dimension, for an input of {@code in} (checked, with a clear error). */
    public abstract long[] outputShape(long[] in);

    /** Parameters and buffers with their state_dict names relative to this layer. */
    public List<Parameter> parameters() {
        return List.of();
    }

    public abstract Tensor forward(Pass pass, Tensor x);

    /** dL/dx from dL/dy, accumulating parameter gradients. Only after a training-mode forward. */
    public abstract Tensor backward(Pass pass, Tensor dy);

    /**
     * As {@link #backward(Pass, Tensor)}, but when {@code inputGrad} is false nobody needs dL/dx
     * (nothing before this layer is trained): layers with a costly input gradient (linear,
     * convolution) skip it and return null, as PyTorch does for an input without requires_grad.
     */
    public Tensor backward(Pass pass, Tensor dy, boolean inputGrad) {
        return backward(pass, dy);
    }

    /** PyTorch-style type name, for messages. */
    public abstract String kind();

    @Override
    public void close() {
        for (Parameter p : parameters()) p.close();
    }

    protected static Tensor like(Pass pass, Tensor t) {
        return pass.backend().empty(pass.arena(), t.dtype(), t.shape());
    }

    protected static long[] withBatch(long n, long[] shape) {
        long[] s = new long[shape.length + 1];
        s[0] = n;
        System.arraycopy(shape, 0, s, 1, shape.length);
        return s;
    }

    protected static long[] withoutBatch(Tensor t) {
        long[] s = t.shape();
        return java.util.Arrays.copyOfRange(s, 1, s.length);
    }

    protected IllegalStateException noForward() {
        return new IllegalStateException(kind() + ".backward: no training-mode forward to differentiate");
    }
}
