package org.distill4j.core.lm;

import java.lang.foreign.MemorySegment;

/**
 * The CPU oracle for the GPU tests in org.distill4j.tests: DecoderOps is package-private, so this
 * test-only class, in DecoderOps' package on the tests' class path, forwards to it unchanged.
 */
public final class DecoderOpsReference {
    private DecoderOpsReference() {}

    public static void embeddingForward(MemorySegment out, long[] ids, long[] positions, MemorySegment wte, MemorySegment wpe, long d) {
        DecoderOps.embeddingForward(out, ids, positions, wte, wpe, d);
    }

    /** wte bfloat16 [V, d] (a frozen bf16 model's table), widened exactly; wpe float32 or null. */
    public static void embeddingForwardBf16(MemorySegment out, long[] ids, long[] positions, MemorySegment wte, MemorySegment wpe, long d) {
        DecoderOps.embeddingForward(out, ids, positions, wte, true, wpe, d);
    }

    public static void embeddingBackward(MemorySegment dwte, MemorySegment dwpe, MemorySegment dout, long[] ids, long[] positions, long d) {
        DecoderOps.embeddingBackward(dwte, dwpe, dout, ids, positions, d);
    }

    public static void layerNormForward(MemorySegment out, MemorySegment mean, MemorySegment rstd, MemorySegment x, MemorySegment w, MemorySegment b,
                                        long n, long d, float eps) {
        DecoderOps.layerNormForward(out, mean, rstd, x, w, b, n, d, eps);
    }

    public static void layerNormBackward(MemorySegment dx, MemorySegment dw, MemorySegment db, MemorySegment dout, MemorySegment x, MemorySegment w,
                                         MemorySegment mean, MemorySegment rstd, long n, long d, boolean accumulate) {
        DecoderOps.layerNormBackward(dx, dw, db, dout, x, w, mean, rstd, n, d, accumulate);
    }

    /** Rows (r, h) at column col + h * d of x [n, stride], as DecoderModel's per-head norm loops over heads; rstd [heads, n]. */
    public static void rmsNormForward(MemorySegment out, MemorySegment rstd, MemorySegment x, MemorySegment w, long n, long heads, long d, long col,
                                      long stride, float eps) {
        for (long h = 0; h < heads; h++) {
            long c = col + h * d;
            DecoderOps.rmsNormForward(DecoderOps.columns(out, c), rstd.asSlice(h * n * Float.BYTES), DecoderOps.columns(x, c), w, n, d, stride, eps);
        }
    }

    public static void rmsNormBackward(MemorySegment dx, MemorySegment dw, MemorySegment dout, MemorySegment x, MemorySegment w, MemorySegment rstd,
                                       long n, long heads, long d, long col, long stride, boolean accumulate) {
        for (long h = 0; h < heads; h++) {
            long c = col + h * d;
            DecoderOps.rmsNormBackward(DecoderOps.columns(dx, c), dw, DecoderOps.columns(dout, c), DecoderOps.columns(x, c), w,
                rstd.asSlice(h * n * Float.BYTES), n, d, stride, accumulate);
        }
    }

    public static void ropeTables(MemorySegment cos, MemorySegment sin, long[] positions, float[] invFreq) {
        DecoderOps.ropeTables(cos, sin, positions, invFreq);
    }

    public static void rope(MemorySegment x, long col, long stride, long n, long heads, MemorySegment cos, MemorySegment sin, long half, boolean inverse) {
        DecoderOps.rope(x, col, stride, n, heads, cos, sin, half, inverse);
    }

    private static DecoderOps.AttentionShape shape(int batch, int heads, int kvHeads, long hd, long tq, long tk, long past, MemorySegment q, long ldQ,
                                                   long qCol, MemorySegment k, MemorySegment v, long ldK, long kBatch, long kCol, long vCol, long[] keyMask,
                                                   float scale) {
        return new DecoderOps.AttentionShape(batch, heads, kvHeads, hd, tq, tk, past, q, ldQ, qCol, k, v, ldK, kBatch, kCol, vCol, keyMask, scale);
    }

    public static void attentionScores(int batch, int heads, int kvHeads, long hd, long tq, long tk, long past, MemorySegment q, long ldQ, long qCol,
                                       MemorySegment k, MemorySegment v, long ldK, long kBatch, long kCol, long vCol, long[] keyMask, float scale,
                                       MemorySegment probs) {
        DecoderOps.attentionScores(shape(batch, heads, kvHeads, hd, tq, tk, past, q, ldQ, qCol, k, v, ldK, kBatch, kCol, vCol, keyMask, scale), probs);
    }

    public static void attentionValues(int batch, int heads, int kvHeads, long hd, long tq, long tk, long past, MemorySegment q, long ldQ, long qCol,
                                       MemorySegment k, MemorySegment v, long ldK, long kBatch, long kCol, long vCol, long[] keyMask, float scale,
                                       MemorySegment probs, MemorySegment out, long ldOut) {
        DecoderOps.attentionValues(shape(batch, heads, kvHeads, hd, tq, tk, past, q, ldQ, qCol, k, v, ldK, kBatch, kCol, vCol, keyMask, scale), probs, out,
            ldOut);
    }

    /** Training attention over one q | k | v buffer [B * T, ldQkv] (no dropout: probsUsed = probs). */
    public static void attentionBackward(int batch, int heads, int kvHeads, long hd, long t, MemorySegment qkv, long ldQkv, long[] keyMask, float scale,
                                         MemorySegment probs, MemorySegment dprobs, MemorySegment dout, long ldOut, MemorySegment dqkv) {
        long kCol = heads * hd, vCol = kCol + kvHeads * hd;
        DecoderOps.attentionBackward(shape(batch, heads, kvHeads, hd, t, t, 0, qkv, ldQkv, 0, qkv, qkv, ldQkv, t * ldQkv, kCol, vCol, keyMask, scale),
            probs, probs, dprobs, dout, ldOut, dqkv, () -> { });
    }

    public static void geluForward(MemorySegment out, MemorySegment x, long count) {
        DecoderOps.geluForward(out, x, count);
    }

    public static void geluBackward(MemorySegment dx, MemorySegment dout, MemorySegment x, long count) {
        DecoderOps.geluBackward(dx, dout, x, count);
    }

    public static void swigluForward(MemorySegment out, MemorySegment gateUp, long n, long features) {
        DecoderOps.swigluForward(out, gateUp, n, features);
    }

    public static void swigluBackward(MemorySegment dgateUp, MemorySegment dout, MemorySegment gateUp, long n, long features) {
        DecoderOps.swigluBackward(dgateUp, dout, gateUp, n, features);
    }

    public static double nextTokenCrossEntropy(MemorySegment logits, long[] labels, int batch, long t, long vocab, MemorySegment dlogits) {
        return DecoderOps.nextTokenCrossEntropy(logits, labels, batch, t, vocab, dlogits);
    }

    public static void projectionForward(MemorySegment out, long col, long ldOut, MemorySegment x, long ldX, MemorySegment w, MemorySegment b, long n,
                                         long in, long outF, boolean storedInOut) {
        DecoderOps.projectionForward(out, col, ldOut, x, ldX, w, b, n, in, outF, storedInOut);
    }

    public static void projectionBackward(MemorySegment dx, long ldDx, boolean accumulateDx, MemorySegment dw, MemorySegment db, MemorySegment dout,
                                          long col, long ldOut, MemorySegment x, long ldX, MemorySegment w, long n, long in, long outF, boolean storedInOut) {
        DecoderOps.projectionBackward(dx, ldDx, accumulateDx, dw, db, dout, col, ldOut, x, ldX, w, n, in, outF, storedInOut);
    }
}
