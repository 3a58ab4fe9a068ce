package org.distill4j.core;

import java.util.Arrays;
import java.util.List;

/** Argument checks shared by the backends: every failure names the op and the shapes involved. */
public final class Shapes {
    private Shapes() {}

    /** {@link #alive(String, Tensor...)} for one tensor, without a varargs array per call (ops that must not allocate). */
    public static void alive(String op, Tensor t) {
        if (t != null && !t.isAlive()) throw new IllegalStateException(op + ": tensor " + t.describe() + " is closed");
    }

    /** {@link #dtype(String, DType, Tensor...)} for one tensor, without a varargs array per call. */
    public static void dtype(String op, DType expected, Tensor t) {
        if (t != null && t.dtype() != expected) throw new IllegalArgumentException(op + ": expected " + expected + ", got " + t.describe());
    }

    /** {@link #backend(String, Backend, Tensor...)} for one tensor, without a varargs array per call. */
    public static void backend(String op, Backend b, Tensor t) {
        if (t != null && t.backend() != b) throw new IllegalArgumentException(op + ": tensor " + t.describe() + " belongs to another backend than " + b.name());
    }

    public static void alive(String op, Tensor... ts) {
        for (Tensor t : ts) {
            if (t != null && !t.isAlive()) throw new IllegalStateException(op + ": tensor " + t.describe() + " is closed");
        }
    }

    public static void dtype(String op, DType expected, Tensor... ts) {
        for (Tensor t : ts) {
            if (t != null && t.dtype() != expected) throw new IllegalArgumentException(op + ": expected " + expected + ", got " + t.describe());
        }
    }

    public static void same(String op, Tensor a, Tensor b) {
        if (a.numel() != b.numel() || !a.sameShape(b)) {
            throw new IllegalArgumentException(op + ": shapes differ: " + Arrays.toString(a.shape()) + " vs " + Arrays.toString(b.shape()));
        }
    }

    /** One allowed rank: no varargs array, so a hot check allocates nothing even where the JIT does not inline it. */
    public static void rank(String op, Tensor t, int allowed) {
        if (t.rank() != allowed) throw new IllegalArgumentException(op + ": expected rank " + allowed + ", got " + t.describe());
    }

    public static void rank(String op, Tensor t, int... allowed) {
        for (int r : allowed) if (t.rank() == r) return;
        throw new IllegalArgumentException(op + ": expected rank " + Arrays.toString(allowed) + ", got " + t.describe());
    }

    /** {@link #expect(String, Tensor, long...)} for a 1-D shape [n], without a varargs array per call. */
    public static void expect(String op, Tensor t, long n) {
        if (t.rank() != 1 || t.size(0) != n) {
            throw new IllegalArgumentException(op + ": expected shape [" + n + "], got " + Arrays.toString(t.shape()));
        }
    }

    public static void expect(String op, Tensor t, long... shape) {
        if (!t.hasShape(shape)) {
            throw new IllegalArgumentException(op + ": expected shape " + Arrays.toString(shape) + ", got " + Arrays.toString(t.shape()));
        }
    }

    public static void backend(String op, Backend b, Tensor... ts) {
        for (Tensor t : ts) {
            if (t != null && t.backend() != b) {
                throw new IllegalArgumentException(op + ": tensor " + t.describe() + " belongs to another backend than " + b.name());
            }
        }
    }

    public static int toInt(String op, long v) {
        if (v > Integer.MAX_VALUE) throw new IllegalArgumentException(op + ": dimension " + v + " exceeds 2^31 - 1");
        return (int) v;
    }

    /**
     * [outer, features, inner] of y for a per-feature tensor (a bias or its gradient) along the
     * last axis ({@code channelAxis} false: [rows, F, 1]) or axis 1 (true: [N, C, rest]); checks
     * that {@code perFeature} holds exactly that many elements.
     */
    public static long[] biasLayout(String op, Tensor y, Tensor perFeature, boolean channelAxis) {
        long[] s = y.shape();
        if (s.length < (channelAxis ? 2 : 1)) throw new IllegalArgumentException(op + ": expected rank >= " + (channelAxis ? 2 : 1) + ", got " + y.describe());
        long features = channelAxis ? s[1] : s[s.length - 1];
        if (perFeature.numel() != features) {
            throw new IllegalArgumentException(op + ": " + perFeature.describe() + " does not match the " + features + (channelAxis ? " channels (axis 1)" : " features (last axis)")
                + " of " + y.describe());
        }
        if (!channelAxis) return new long[] {y.numel() / Math.max(1, features), features, 1};
        return new long[] {s[0], s[1], y.numel() / Math.max(1, s[0]) / Math.max(1, s[1])};
    }

    /** [N, C, inner] of x [N, C, ...] (channel axis 1); every per-channel tensor must hold C elements. */
    public static long[] channelLayout(String op, Tensor x, Tensor... perChannel) {
        long[] s = x.shape();
        if (s.length < 2) throw new IllegalArgumentException(op + ": expected [N, C, ...], got " + x.describe());
        for (Tensor t : perChannel) {
            if (t != null && t.numel() != s[1]) {
                throw new IllegalArgumentException(op + ": per-channel tensor " + t.describe() + " does not match " + s[1] + " channels of " + x.describe());
            }
        }
        return new long[] {s[0], s[1], x.numel() / Math.max(1, s[0]) / Math.max(1, s[1])};
    }

    /** Checks y is the pooled shape of x [N, C, H, W]. */
    public static void pool(String op, Pool2dParams p, Tensor x, Tensor y) {
        rank(op, x, 4);
        long oh = p.outH(x.size(2)), ow = p.outW(x.size(3));
        if (oh < 1 || ow < 1) throw new IllegalArgumentException(op + ": window larger than padded input " + x.describe());
        if (y.rank() != 4 || y.size(0) != x.size(0) || y.size(1) != x.size(1) || y.size(2) != oh || y.size(3) != ow) { // no message built per call
            expect(op + " output", y, x.size(0), x.size(1), oh, ow);
        }
    }

    /** Checks x [N, C, H, W], w [K, C, R, S] and y [N, K, OH, OW] chain, and returns the geometry. */
    public static ConvGeometry conv(String op, Tensor x, Tensor w, Conv2dParams p, Tensor y) {
        rank(op, x, 4);
        rank(op, w, 4);
        rank(op, y, 4);
        // Sizes read one by one (no shape copies): a warm convolution allocates only the geometry record.
        if (x.size(1) != w.size(1)) {
            throw new IllegalArgumentException(op + ": input channels differ: x " + Arrays.toString(x.shape()) + " vs weight " + Arrays.toString(w.shape()));
        }
        int oh = p.outH(x.size(2), w.size(2)), ow = p.outW(x.size(3), w.size(3));
        if (oh < 1 || ow < 1) {
            throw new IllegalArgumentException(op + ": kernel " + Arrays.toString(w.shape()) + " larger than padded input " + Arrays.toString(x.shape()));
        }
        if (y.size(0) != x.size(0) || y.size(1) != w.size(0) || y.size(2) != oh || y.size(3) != ow) {
            throw new IllegalArgumentException(op + ": output shape " + Arrays.toString(y.shape()) + ", expected "
                + Arrays.toString(new long[] {x.size(0), w.size(0), oh, ow}) + " for x " + Arrays.toString(x.shape()) + " and weight " + Arrays.toString(w.shape()));
        }
        return new ConvGeometry(toInt(op, x.size(0)), toInt(op, x.size(1)), toInt(op, x.size(2)), toInt(op, x.size(3)), toInt(op, w.size(0)),
            toInt(op, w.size(2)), toInt(op, w.size(3)), oh, ow);
    }

    /**
     * Checks the operands of {@link Backend#gemmStridedBatched}: sizes and batch non-negative (batch
     * at least 1), A and B both F32 or both BF16, C F32, every leading dimension at least its
     * matrix's row length, C not broadcast (stride 0 with batch > 1 would make the batch race on it),
     * and every matrix of the batch inside its tensor. Allocates nothing.
     */
    public static void gemmStridedBatched(String op, boolean transA, boolean transB, int m, int n, int k, Tensor a, long offA, int lda, long strideA,
                                          Tensor b, long offB, int ldb, long strideB, Tensor c, long offC, int ldc, long strideC, int batch) {
        if (m < 0 || n < 0 || k < 0 || batch < 1) throw new IllegalArgumentException(op + ": m, n, k must be >= 0 and batch >= 1, got m " + m + ", n " + n
            + ", k " + k + ", batch " + batch);
        if (a.dtype() != b.dtype() || (a.dtype() != DType.F32 && a.dtype() != DType.BF16)) {
            throw new IllegalArgumentException(op + ": A and B must both be F32 or both BF16, got A " + a.describe() + ", B " + b.describe());
        }
        dtype(op, DType.F32, c);
        if (strideC == 0 && batch > 1) throw new IllegalArgumentException(op + ": C has batch stride 0 with " + batch + " matrices (only A and B may be broadcast)");
        matrixBatch(op, "A", a, offA, transA ? k : m, transA ? m : k, lda, strideA, batch);
        matrixBatch(op, "B", b, offB, transB ? n : k, transB ? k : n, ldb, strideB, batch);
        matrixBatch(op, "C", c, offC, m, n, ldc, strideC, batch);
    }

    /** {@code batch} row-major rows x cols matrices, {@code ld} apart by row and {@code stride} apart, from element {@code offset} of {@code t}. */
    private static void matrixBatch(String op, String name, Tensor t, long offset, int rows, int cols, int ld, long stride, int batch) {
        if (ld < Math.max(1, cols)) throw new IllegalArgumentException(op + ": leading dimension of " + name + " is " + ld + ", needs >= " + Math.max(1, cols));
        if (offset < 0 || stride < 0) throw new IllegalArgumentException(op + ": " + name + " offset " + offset + " and stride " + stride + " must be >= 0");
        if (rows == 0 || cols == 0) return;
        long end = offset + (batch - 1) * stride + (long) (rows - 1) * ld + cols; // one past the last element read or written
        if (end > t.numel()) {
            throw new IllegalArgumentException(op + ": " + name + " needs elements up to " + end + " (" + batch + " matrices " + rows + "x" + cols + ", ld " + ld
                + ", stride " + stride + ", offset " + offset + "), " + t.describe() + " holds " + t.numel());
        }
    }

    /** Optimizer state: one F32 tensor of the parameter's shape per parameter, in every list, all on {@code backend}. */
    public static void optimizerState(String op, Backend backend, List<Tensor> params, List<List<Tensor>> state) {
        for (List<Tensor> o : state) {
            if (o.size() != params.size()) throw new IllegalArgumentException(op + ": " + params.size() + " parameters but " + o.size() + " state tensors");
        }
        for (int i = 0; i < params.size(); i++) {
            Tensor p = params.get(i);
            alive(op, p);
            backend(op, backend, p);
            dtype(op, DType.F32, p);
            for (List<Tensor> o : state) {
                alive(op, o.get(i));
                backend(op, backend, o.get(i));
                dtype(op, DType.F32, o.get(i));
                same(op + " (parameter " + i + ")", p, o.get(i));
            }
        }
    }
}
