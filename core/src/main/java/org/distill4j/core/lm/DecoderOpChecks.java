package org.distill4j.core.lm;

import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Shapes;
import org.distill4j.core.Tensor;

/**
 * The argument checks of {@link DecoderDeviceOps}, written once for every backend: each
 * implementation calls the op's check before it runs (tensors alive, on its backend, float32 where
 * the op needs it, and every buffer large enough for the rows, columns and strides it is given).
 * The checks are O(1) but for the token-id and position range checks, O(N) over host arrays.
 */
final class DecoderOpChecks {
    private DecoderOpChecks() {}

    /** Alive, on {@code backend}, float32 (null tensors are optional arguments and pass). */
    static void f32(String op, Backend backend, Tensor... ts) {
        Shapes.alive(op, ts);
        Shapes.backend(op, backend, ts);
        Shapes.dtype(op, DType.F32, ts);
    }

    /**
     * Refuses, in one line, a part of the decoder stack that still reads host memory directly
     * (DecoderOps on {@code .data()} segments) when it is given a device backend: what it is and why.
     */
    static void hostOnly(String what, String why, Backend backend) {
        if (!backend.isHost()) {
            throw new UnsupportedOperationException(what + " runs on the CPU backend only so far: " + why + " (asked for " + backend.name()
                + "; DecoderModel's forward and backward themselves run on CUDA)");
        }
    }

    static void numel(String op, String name, Tensor t, long expected) {
        if (t != null && t.numel() != expected) {
            throw new IllegalArgumentException(op + ": " + name + " must hold " + expected + " elements, got " + t.describe());
        }
    }

    static void positive(String op, String name, long v) {
        if (v <= 0) throw new IllegalArgumentException(op + ": " + name + " must be > 0, got " + v);
    }

    static void indices(String op, String what, long[] v, long limit) {
        for (int i = 0; i < v.length; i++) {
            if (v[i] < 0 || v[i] >= limit) throw new IllegalArgumentException(op + ": " + what + " " + v[i] + " at row " + i + " is outside [0, " + limit + ")");
        }
    }

    // ---- embeddings

    static void embeddingForward(Backend backend, Tensor out, long[] ids, long[] positions, Tensor wte, Tensor wpe) {
        String op = "embeddingForward";
        f32(op, backend, out, wpe);
        Shapes.alive(op, wte);
        Shapes.backend(op, backend, wte);
        if (wte.dtype() != DType.F32 && wte.dtype() != DType.BF16) throw new IllegalArgumentException(op + ": wte must be F32 or BF16, got " + wte.describe());
        Shapes.rank(op, wte, 2);
        long n = ids.length, d = wte.size(1);
        numel(op, "out", out, n * d);
        if (wpe != null) {
            Shapes.rank(op, wpe, 2);
            if (wpe.size(1) != d) throw new IllegalArgumentException(op + ": wpe " + wpe.describe() + " is not " + d + " wide as wte " + wte.describe());
            if (positions == null || positions.length != n) throw new IllegalArgumentException(op + ": learned positions need " + n + " positions");
            indices(op, "position", positions, wpe.size(0));
        }
        indices(op, "token id", ids, wte.size(0));
    }

    static void embeddingBackward(Backend backend, Tensor dwte, Tensor dwpe, Tensor dout, long[] ids, long[] positions) {
        String op = "embeddingBackward";
        f32(op, backend, dwte, dwpe, dout);
        Shapes.rank(op, dwte, 2);
        long n = ids.length, d = dwte.size(1);
        numel(op, "dout", dout, n * d);
        indices(op, "token id", ids, dwte.size(0));
        if (dwpe != null) {
            Shapes.rank(op, dwpe, 2);
            if (dwpe.size(1) != d || positions == null || positions.length != n) {
                throw new IllegalArgumentException(op + ": dwpe " + dwpe.describe() + " needs width " + d + " and " + n + " positions");
            }
            indices(op, "position", positions, dwpe.size(0));
        }
    }

    // ---- norms

    static void layerNormForward(Backend backend, Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b) {
        String op = "layerNormForward";
        f32(op, backend, out, mean, rstd, x, w, b);
        long d = x.cols(), n = x.rows();
        positive(op, "width", d);
        numel(op, "out", out, n * d);
        numel(op, "mean", mean, n);
        numel(op, "rstd", rstd, n);
        numel(op, "w", w, d);
        numel(op, "b", b, d);
    }

    static void layerNormBackward(Backend backend, Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean, Tensor rstd) {
        String op = "layerNormBackward";
        f32(op, backend, dx, dw, db, dout, x, w, mean, rstd);
        long d = x.cols(), n = x.rows();
        positive(op, "width", d);
        if (mean == null || rstd == null) throw new IllegalArgumentException(op + ": needs the forward's mean and rstd");
        numel(op, "dx", dx, n * d);
        numel(op, "dout", dout, n * d);
        numel(op, "w", w, d);
        numel(op, "dw", dw, d);
        numel(op, "db", db, d);
        numel(op, "mean", mean, n);
        numel(op, "rstd", rstd, n);
    }

    static void rmsNormForward(Backend backend, Tensor out, Tensor rstd, Tensor x, Tensor w, long n, long heads, long d, long col, long stride) {
        String op = "rmsNormForward";
        f32(op, backend, out, rstd, x, w);
        rmsRows(op, x, w, n, heads, d, col, stride);
        numel(op, "out", out, n * stride);
        numel(op, "rstd", rstd, n * heads);
    }

    static void rmsNormBackward(Backend backend, Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, long n, long heads, long d, long col,
                                long stride) {
        String op = "rmsNormBackward";
        f32(op, backend, dx, dw, dout, x, w, rstd);
        rmsRows(op, x, w, n, heads, d, col, stride);
        if (rstd == null) throw new IllegalArgumentException(op + ": needs the forward's rstd");
        numel(op, "dx", dx, n * stride);
        numel(op, "dout", dout, n * stride);
        numel(op, "dw", dw, d);
        numel(op, "rstd", rstd, n * heads);
    }

    private static void rmsRows(String op, Tensor x, Tensor w, long n, long heads, long d, long col, long stride) {
        positive(op, "width", d);
        positive(op, "heads", heads);
        if (n < 0 || col < 0 || col + heads * d > stride) {
            throw new IllegalArgumentException(op + ": " + heads + " rows of " + d + " from column " + col + " do not fit rows of " + stride + " (n = " + n + ")");
        }
        numel(op, "x", x, n * stride);
        numel(op, "w", w, d);
    }

    // ---- rotary embeddings

    static void ropeTables(Backend backend, Tensor cos, Tensor sin, long[] positions, float[] invFreq) {
        String op = "ropeTables";
        f32(op, backend, cos, sin);
        long n = positions.length, half = invFreq.length;
        positive(op, "half head width", half);
        numel(op, "cos", cos, n * half);
        numel(op, "sin", sin, n * half);
    }

    static void rope(Backend backend, Tensor x, long col, long stride, long n, long heads, Tensor cos, Tensor sin, long half) {
        String op = "rope";
        f32(op, backend, x, cos, sin);
        positive(op, "half head width", half);
        if (n < 0 || heads < 0 || col < 0 || col + heads * 2 * half > stride) {
            throw new IllegalArgumentException(op + ": " + heads + " heads of " + 2 * half + " from column " + col + " do not fit rows of " + stride);
        }
        numel(op, "x", x, n * stride);
        numel(op, "cos", cos, n * half);
        numel(op, "sin", sin, n * half);
    }

    // ---- attention

    static void attention(String op, Backend backend, DecoderDeviceOps.Attention a, Tensor probs) {
        f32(op, backend, a.q(), a.k(), a.v(), probs);
        if (a.batch() < 0 || a.heads() <= 0 || a.kvHeads() <= 0 || a.heads() % a.kvHeads() != 0 || a.hd() <= 0 || a.tq() < 0 || a.tk() <= 0
            || a.past() < 0 || a.past() + a.tq() > a.tk()) {
            throw new IllegalArgumentException(op + ": bad attention shape: batch " + a.batch() + ", heads " + a.heads() + ", kv heads " + a.kvHeads()
                + ", head dim " + a.hd() + ", tq " + a.tq() + ", tk " + a.tk() + ", past " + a.past());
        }
        if (a.qCol() + a.heads() * a.hd() > a.ldQ() || a.q().numel() < a.batch() * a.tq() * a.ldQ()) {
            throw new IllegalArgumentException(op + ": q " + a.q().describe() + " does not hold " + a.heads() + " heads of " + a.hd() + " from column "
                + a.qCol() + " in rows of " + a.ldQ());
        }
        long kvWidth = a.kvHeads() * a.hd(), kvNeed = (a.batch() - 1) * a.kBatch() + (a.tk() - 1) * a.ldK();
        if (a.kCol() + kvWidth > a.ldK() || a.vCol() + kvWidth > a.ldK() || a.k().numel() < kvNeed + a.kCol() + kvWidth
            || a.v().numel() < kvNeed + a.vCol() + kvWidth) {
            throw new IllegalArgumentException(op + ": keys " + a.k().describe() + " / values " + a.v().describe() + " do not hold " + a.tk() + " rows of "
                + a.kvHeads() + " kv heads in rows of " + a.ldK() + " (batch stride " + a.kBatch() + ")");
        }
        if (a.keyMask() != null && a.keyMask().length != a.batch() * a.tk()) {
            throw new IllegalArgumentException(op + ": key mask of " + a.keyMask().length + " entries for [" + a.batch() + ", " + a.tk() + "]");
        }
        numel(op, "probs", probs, (long) a.batch() * a.heads() * a.tq() * a.tk());
        Shapes.toInt(op, Math.max(Math.max(a.ldQ(), a.ldK()), Math.max(a.tk(), a.hd())));
    }

    static void attentionValues(Backend backend, DecoderDeviceOps.Attention a, Tensor probs, Tensor out, long ldOut) {
        String op = "attentionValues";
        attention(op, backend, a, probs);
        f32(op, backend, out);
        if (a.heads() * a.hd() > ldOut || out.numel() < a.batch() * a.tq() * ldOut) {
            throw new IllegalArgumentException(op + ": out " + out.describe() + " does not hold " + a.heads() + " heads of " + a.hd() + " in rows of " + ldOut);
        }
    }

    static void attentionBackward(Backend backend, DecoderDeviceOps.Attention a, Tensor probs, Tensor probsUsed, Tensor dprobs, Tensor dout, long ldOut,
                                  Tensor dqkv) {
        String op = "attentionBackward";
        attention(op, backend, a, probs);
        f32(op, backend, probsUsed, dprobs, dout, dqkv);
        numel(op, "probsUsed", probsUsed, probs.numel());
        numel(op, "dprobs", dprobs, probs.numel());
        if (a.past() != 0 || a.tq() != a.tk()) throw new IllegalArgumentException(op + ": training attention only (no cache): tq " + a.tq() + ", tk " + a.tk());
        if (a.heads() * a.hd() > ldOut || dout.numel() < a.batch() * a.tq() * ldOut) {
            throw new IllegalArgumentException(op + ": dout " + dout.describe() + " does not hold " + a.heads() + " heads of " + a.hd() + " in rows of " + ldOut);
        }
        if (dqkv.numel() < Math.max(a.q().numel(), a.k().numel())) {
            throw new IllegalArgumentException(op + ": dqkv " + dqkv.describe() + " is smaller than the q | k | v buffer");
        }
    }

    // ---- projections

    /**
     * A projection's geometry: out (or dout) holds n rows of ldOut with the projection's columns at
     * [col, col + outF); x n rows of ldX with in features; w in * outF elements of {@code weightDtypes};
     * b outF (when not null).
     */
    static void projection(String op, Backend backend, Tensor out, long col, long ldOut, Tensor x, long ldX, Tensor w, Tensor b, long n, long in,
                           long outF, DType... weightDtypes) {
        Shapes.alive(op, out, x, w, b);
        Shapes.backend(op, backend, out, x, w, b);
        Shapes.dtype(op, DType.F32, out, x, b);
        boolean admitted = false;
        for (DType t : weightDtypes) admitted |= w.dtype() == t;
        if (!admitted) throw new IllegalArgumentException(op + ": weight must be " + java.util.Arrays.toString(weightDtypes) + ", got " + w.describe());
        positive(op, "in features", in);
        positive(op, "out features", outF);
        if (n < 0 || col < 0 || col + outF > ldOut || in > ldX) {
            throw new IllegalArgumentException(op + ": columns [" + col + ", " + (col + outF) + ") of rows of " + ldOut + " from inputs of " + in + " in rows of " + ldX);
        }
        if (out.numel() < n * ldOut || x.numel() < n * ldX) {
            throw new IllegalArgumentException(op + ": out " + out.describe() + " / x " + x.describe() + " do not hold " + n + " rows of " + ldOut + " / " + ldX);
        }
        numel(op, "weight", w, in * outF);
        numel(op, "bias", b, outF);
        Shapes.toInt(op, Math.max(Math.max(n, ldOut), Math.max(ldX, Math.max(in, outF))));
    }

    /** The backward's checks beyond the forward's geometry: float32 weight and gradient, dx large enough. */
    static void projectionBackward(Backend backend, Tensor dx, long ldDx, Tensor dw, Tensor dout, long col, long ldOut, Tensor x, long ldX, Tensor w,
                                   Tensor db, long n, long in, long outF) {
        String op = "projectionBackward";
        projection(op, backend, dout, col, ldOut, x, ldX, w, db, n, in, outF, DType.F32);
        f32(op, backend, dx, dw);
        numel(op, "dw", dw, in * outF);
        if (dx != null && (in > ldDx || dx.numel() < n * ldDx)) {
            throw new IllegalArgumentException(op + ": dx " + dx.describe() + " does not hold " + n + " rows of " + in + " in rows of " + ldDx);
        }
    }

    // ---- MLP activations

    static void gelu(String op, Backend backend, Tensor out, Tensor x, Tensor dout) {
        f32(op, backend, out, x, dout);
        numel(op, "out", out, x.numel());
        numel(op, "dout", dout, x.numel());
    }

    static void swiglu(String op, Backend backend, Tensor out, Tensor gateUp, Tensor dgateUp) {
        f32(op, backend, out, gateUp, dgateUp);
        long n = out.rows(), f = out.cols();
        numel(op, "gateUp", gateUp, n * 2 * f);
        numel(op, "dgateUp", dgateUp, n * 2 * f);
    }

    // ---- copies and loss

    static void copyRows(Backend backend, Tensor dst, long dstOffset, long ldDst, Tensor src, long srcOffset, long ldSrc, long rows, long width) {
        String op = "copyRows";
        f32(op, backend, dst, src);
        if (rows < 0 || width < 0 || dstOffset < 0 || srcOffset < 0 || width > ldDst || width > ldSrc) {
            throw new IllegalArgumentException(op + ": " + rows + " rows of " + width + " from " + srcOffset + " (rows of " + ldSrc + ") to " + dstOffset
                + " (rows of " + ldDst + ")");
        }
        if (rows > 0 && (dstOffset + (rows - 1) * ldDst + width > dst.numel() || srcOffset + (rows - 1) * ldSrc + width > src.numel())) {
            throw new IllegalArgumentException(op + ": " + rows + " rows of " + width + " do not fit dst " + dst.describe() + " from " + dstOffset
                + " or src " + src.describe() + " from " + srcOffset);
        }
    }

    static void nextTokenLoss(Backend backend, Tensor logits, long[] labels, Tensor dlogits) {
        String op = "nextTokenLoss";
        f32(op, backend, logits, dlogits);
        if (logits.rank() != 3 || labels.length != logits.size(0) * logits.size(1)) {
            throw new IllegalArgumentException(op + ": logits " + logits.describe() + " and " + labels.length + " labels");
        }
        if (dlogits != null && !java.util.Arrays.equals(dlogits.shape(), logits.shape())) throw new IllegalArgumentException(op + ": dlogits " + dlogits.describe());
        Shapes.toInt(op, logits.size(0));
    }
}
