package org.distill4j.core.nn;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.List;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Reduction;
import org.distill4j.core.Tensor;

/**
 * The learned adapter of feature (hint) distillation and its loss: a linear layer [F_s -> F_t] for
 * flat features, a 1x1 convolution [C_s -> C_t] for feature maps of the same height and width.
 * Its parameters are named "hint.weight" and "hint.bias" (in checkpoints "adapter.hint.*").
 */
public final class HintAdapter implements AutoCloseable {
    private final Layer layer;
    private final List<Parameter> parameters;
    private final long featuresPerRow;

    /** Checks that an adapter can map student features {@code s} to teacher features {@code t} (shapes without the batch dimension). */
    public static void shapes(long[] s, long[] t) {
        boolean flat = s.length == 1 && t.length == 1;
        boolean maps = s.length == 3 && t.length == 3 && s[1] == t[1] && s[2] == t[2];
        if (!flat && !maps) {
            throw new IllegalArgumentException("hint: no adapter maps student features " + Arrays.toString(s) + " to teacher features " + Arrays.toString(t)
                + " (a linear adapter needs flat [F] features on both sides, a 1x1-conv adapter [C, H, W] maps with the same H and W)");
        }
    }

    public HintAdapter(Backend backend, long[] studentFeatures, long[] teacherFeatures, long seed) {
        shapes(studentFeatures, teacherFeatures);
        // A seed of its own, so adding a hint does not change the student's initialisation.
        long adapterSeed = seed ^ 0x68696E74L;
        layer = studentFeatures.length == 1
            ? new Layers.Linear(backend, studentFeatures[0], teacherFeatures[0], true, adapterSeed)
            : new Layers.Conv2d(backend, studentFeatures[0], teacherFeatures[0], 1, 1, 0, true, adapterSeed);
        parameters = layer.parameters().stream().map(p -> p.renamed("hint.")).toList();
        featuresPerRow = Tensor.numel(teacherFeatures);
    }

    /** "linear" or "conv2d" (1x1). */
    public String kind() {
        return layer.kind();
    }

    public List<Parameter> parameters() {
        return parameters;
    }

    public void zeroGrad() {
        for (Parameter p : parameters) p.value().backend().zero(p.grad());
    }

    /**
     * The hint term for one micro-batch: a = adapter(hs); out[0] = weight * sum((a - ht)^2) /
     * (groupRows * features per row); returns dL/dhs (accumulating the adapter's gradients), in the
     * pass's arena. hs [N, ...student features], ht [N, ...teacher features].
     */
    public Tensor loss(Layer.Pass pass, Tensor hs, Tensor ht, float weight, long groupRows, Tensor out) {
        Backend b = pass.backend();
        Tensor a = layer.forward(pass, hs);
        if (!Arrays.equals(a.shape(), ht.shape())) {
            throw new IllegalArgumentException("hint: the adapter gives " + Arrays.toString(a.shape()) + ", the teacher layer " + Arrays.toString(ht.shape()));
        }
        Arena arena = pass.arena();
        Tensor diff = b.empty(arena, DType.F32, a.shape());
        b.copy(a, diff);
        b.axpy(-1f, ht, diff);                                   // diff = a - ht
        Tensor sq = b.empty(arena, DType.F32, a.shape());
        b.mul(diff, diff, sq);
        b.reduceRows(Reduction.SUM, sq.view(1, sq.numel()), out);
        double norm = (double) groupRows * featuresPerRow;
        b.scale((float) (weight / norm), out);                   // out = w * sum(diff^2) / (R * F)
        b.scale((float) (2 * weight / norm), diff);              // dL/da = 2 w (a - ht) / (R * F)
        return layer.backward(pass, diff);
    }

    @Override
    public void close() {
        layer.close();
    }
}
