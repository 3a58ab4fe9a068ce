package org.distill4j.core;

import java.lang.foreign.MemorySegment;

/**
 * The argument checks of {@link Backend} ops that go beyond one {@link Shapes} call, written once:
 * each method checks every argument of one op (liveness, backend, dtype, shapes, values) and both
 * {@link org.distill4j.core.cpu.CpuBackend} and {@link org.distill4j.core.cuda.CudaBackend} call it
 * first, so the two cannot drift apart and a message is the same on both. None allocates on the
 * passing path (one tensor per {@link Shapes} call, literal op names): the CPU's steady-state
 * "allocates nothing" tests run through them.
 */
public final class BackendChecks {
    private BackendChecks() {}

    private static void tensor(String op, Backend b, DType dtype, Tensor t) {
        Shapes.alive(op, t);
        Shapes.backend(op, b, t);
        Shapes.dtype(op, dtype, t);
    }

    /** copy: same shape and dtype (either backend's tensors: the copy is within one backend by construction of callers). */
    public static void copy(Tensor src, Tensor dst) {
        Shapes.alive("copy", src);
        Shapes.alive("copy", dst);
        Shapes.same("copy", src, dst);
        if (src.dtype() != dst.dtype()) throw new IllegalArgumentException("copy: dtypes differ: " + src.describe() + " vs " + dst.describe());
    }

    /** copyFromHost: exactly the tensor's bytes. */
    public static void copyFromHost(MemorySegment src, Tensor dst) {
        Shapes.alive("copyFromHost", dst);
        if (src.byteSize() != dst.byteSize()) throw new IllegalArgumentException("copyFromHost: " + src.byteSize() + " bytes for " + dst.describe());
    }

    /**
     * crossEntropy: logits F32 [N, C], labels I64 [N], loss F32 with one element, gradLogits null or
     * logits' shape, label smoothing in [0, 1].
     */
    public static void crossEntropy(Backend b, Tensor logits, Tensor labels, float labelSmoothing, Tensor loss, Tensor gradLogits) {
        String op = "crossEntropy";
        tensor(op, b, DType.F32, logits);
        tensor(op, b, DType.F32, loss);
        tensor(op, b, DType.F32, gradLogits);
        tensor(op, b, DType.I64, labels);
        Shapes.rank(op, logits, 2);
        Shapes.expect("crossEntropy labels", labels, logits.size(0)); // literal names: a concatenation here would allocate on every call
        if (loss.numel() != 1) throw new IllegalArgumentException(op + ": loss must have one element, got " + loss.describe());
        if (gradLogits != null) Shapes.same("crossEntropy gradLogits", logits, gradLogits);
        if (labelSmoothing < 0 || labelSmoothing > 1) throw new IllegalArgumentException(op + ": label smoothing must be in [0, 1], got " + labelSmoothing);
    }

    /** incrementCounter: an I64 scalar. */
    public static void incrementCounter(Backend b, Tensor counter) {
        Shapes.alive("incrementCounter", counter);
        Shapes.backend("incrementCounter", b, counter);
        if (counter.dtype() != DType.I64 || counter.numel() != 1) throw new IllegalArgumentException("incrementCounter: needs an I64 scalar, got " + counter.describe());
    }

    /** reduceRows: x F32, out F32 with one element per row of x. */
    public static void reduceRows(Backend b, Tensor x, Tensor out) {
        tensor("reduceRows", b, DType.F32, x);
        tensor("reduceRows", b, DType.F32, out);
        if (out.numel() != x.rows()) throw new IllegalArgumentException("reduceRows: out " + out.describe() + " needs " + x.rows() + " elements for " + x.describe());
    }

    /** reduceCols: x F32, out F32 with one element per column of x. */
    public static void reduceCols(Backend b, Tensor x, Tensor out) {
        tensor("reduceCols", b, DType.F32, x);
        tensor("reduceCols", b, DType.F32, out);
        if (out.numel() != x.cols()) throw new IllegalArgumentException("reduceCols: out " + out.describe() + " needs " + x.cols() + " elements for " + x.describe());
    }

    /** argmax: x F32, out I64 with one element per row of x. */
    public static void argmax(Backend b, Tensor x, Tensor out) {
        tensor("argmax", b, DType.F32, x);
        tensor("argmax", b, DType.I64, out);
        if (out.numel() != x.rows()) throw new IllegalArgumentException("argmax: out " + out.describe() + " needs " + x.rows() + " elements for " + x.describe());
    }

    /** correctCount: logits F32 [N, C], labels I64 [N], out I64 with one element. */
    public static void correctCount(Backend b, Tensor logits, Tensor labels, Tensor out) {
        tensor("correctCount", b, DType.F32, logits);
        tensor("correctCount", b, DType.I64, labels);
        tensor("correctCount", b, DType.I64, out);
        Shapes.rank("correctCount", logits, 2);
        Shapes.expect("correctCount labels", labels, logits.size(0));
        if (out.numel() != 1) throw new IllegalArgumentException("correctCount: out must have one element, got " + out.describe());
    }

    /**
     * batchNormTrain: every tensor F32, y x's shape, per-channel tensors C elements, more than one
     * value per channel (as PyTorch); returns {@link Shapes#channelLayout} [N, C, inner].
     */
    public static long[] batchNormTrain(Backend b, Tensor x, Tensor gamma, Tensor beta, Tensor runningMean, Tensor runningVar, Tensor y, Tensor saveMean,
                                        Tensor saveInvStd) {
        String op = "batchNormTrain";
        for (Tensor t : new Tensor[] {x, gamma, beta, runningMean, runningVar, y, saveMean, saveInvStd}) tensor(op, b, DType.F32, t);
        Shapes.same(op, x, y);
        long[] l = Shapes.channelLayout(op, x, gamma, beta, runningMean, runningVar, saveMean, saveInvStd);
        if (l[0] * l[2] < 2) throw new IllegalArgumentException(op + ": needs more than one value per channel, got " + x.describe() + " (as PyTorch)");
        return l;
    }

    /** dropout / dropoutBackward: p in [0, 1), x and y F32 of one shape. */
    public static void dropout(Backend b, float p, Tensor x, Tensor y) {
        if (!(p >= 0 && p < 1)) throw new IllegalArgumentException("dropout: p must be in [0, 1), got " + p);
        tensor("dropout", b, DType.F32, x);
        tensor("dropout", b, DType.F32, y);
        Shapes.same("dropout", x, y);
    }

    /** addBroadcast: all F32 on {@code b}, b's shape a suffix of a's, out a's shape and not b. */
    public static void addBroadcast(Backend backend, Tensor a, Tensor b, Tensor out) {
        String op = "addBroadcast";
        tensor(op, backend, DType.F32, a);
        tensor(op, backend, DType.F32, b);
        tensor(op, backend, DType.F32, out);
        Shapes.same(op, a, out);
        if (out == b) throw new IllegalArgumentException(op + ": out cannot be b (b is read after out is written)");
        int ra = a.rank(), rb = b.rank();
        boolean suffix = rb <= ra;
        for (int i = 1; suffix && i <= rb; i++) suffix = a.size(ra - i) == b.size(rb - i);
        if (!suffix) throw new IllegalArgumentException(op + ": " + b.describe() + " is not broadcastable over the leading axes of " + a.describe()
            + " (its shape must be a suffix of a's)");
    }

    /** sgdStep / adamwStep with a host step number: steps count from 1 (bias correction, SGD's first-step momentum). */
    public static void optimizerStep(String op, long step) {
        if (step < 1) throw new IllegalArgumentException(op + ": step counts from 1, got " + step);
    }

    /** sgdStep / adamwStep with device scalars: F32 [4] ({@link Optimizers.Sgd#scalars}, {@link Optimizers.AdamW#scalars}). */
    public static void stepScalars(Backend b, String op, Tensor scalars) {
        tensor(op, b, DType.F32, scalars);
        if (scalars.numel() != 4) throw new IllegalArgumentException(op + ": scalars must be F32 [4], got " + scalars.describe());
    }

    /** gemmStridedBatched: every tensor alive and on {@code b}, then {@link Shapes#gemmStridedBatched}. */
    public static void gemmStridedBatched(Backend b, boolean transA, boolean transB, int m, int n, int k, Tensor a, long offA, int lda, long strideA,
                                          Tensor bt, long offB, int ldb, long strideB, Tensor c, long offC, int ldc, long strideC, int batch) {
        String op = "gemmStridedBatched";
        Shapes.alive(op, a);
        Shapes.alive(op, bt);
        Shapes.alive(op, c);
        Shapes.backend(op, b, a);
        Shapes.backend(op, b, bt);
        Shapes.backend(op, b, c);
        Shapes.gemmStridedBatched(op, transA, transB, m, n, k, a, offA, lda, strideA, bt, offB, ldb, strideB, c, offC, ldc, strideC, batch);
    }
}
