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
 *
 * <p>A layer type is one subclass plus its {@link LayerKind} (the JSON keys and how to build the
 * layer from them); everything else a model needs from the type is here: {@link #outputShape},
 * {@link #parameters}, {@link #forward}/{@link #backward}, {@link #hasDropout} and
 * {@link #compileInference}. The built-in types are in {@link Layers}; a user-defined one, from
 * any package, joins a spec through {@link LayerRegistry#with(LayerKind)}.
 */
public abstract class Layer implements AutoCloseable {
    /** Per-pass state: backend, the arena activations live in, train/eval, and the dropout stream. */
    public record Pass(Backend backend, Arena arena, boolean train, long seed, long step) {}

    /**
     * For the layer classes in this package and for user-defined layers. A user-defined layer
     * owns parameters ({@link Parameter}'s constructor is public; name them as PyTorch's
     * state_dict would, relative to the layer), runs its forward and backward on any backend,
     * and sits in a {@link Model} once its {@link LayerKind} is registered in the
     * {@link LayerRegistry} the {@link ModelSpec} is parsed with.
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

    /** Layers nested in this one (a sequential block's, a residual's body and shortcut), for walks over the tree. */
    public List<Layer> children() {
        return List.of();
    }

    /**
     * True when this layer or one nested in it draws a dropout mask in training (the mask depends
     * on the step, so a training step is not replayable as a graph). Default: any child's.
     */
    public boolean hasDropout() {
        for (Layer c : children()) if (c.hasDropout()) return true;
        return false;
    }

    /**
     * Adds this layer's eval-mode forward to an {@link InferencePlan} for an input in buffer
     * {@code in} of per-row shape {@code inShape} ({@code outShape} = {@link #outputShape}), and
     * returns the buffer holding its output (possibly {@code in} itself, for a layer that only
     * views its input). The default runs {@link #forward} in eval mode on the CPU backend, which
     * allocates per call ({@link InferencePlan.Builder#forwardStep}); layers that serve from the
     * Predictor override it with steps over the plan's buffers that allocate nothing.
     */
    public int compileInference(InferencePlan.Builder plan, long[] inShape, long[] outShape, int in) {
        return plan.forwardStep(this, inShape, outShape, in);
    }

    /**
     * Whether {@link #compileInference} takes an input buffer in the channel-blocked layout
     * ({@link InferencePlan.Builder#blocked}); for a layer that does not (the default), the plan
     * converts such an input to NCHW first. A layer that does either reads it in that layout
     * (elementwise layers, whose output then has it too: {@link InferencePlan.Builder#bufferLike})
     * or converts it itself ({@link InferencePlan.Builder#plain}).
     */
    public boolean compilesBlocked() {
        return false;
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
