package org.distill4j.core.lm;

import java.lang.foreign.MemorySegment;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.lm.DecoderOps.AttentionShape;

/**
 * {@link DecoderDeviceOps} on the {@link CpuBackend}: each op checks its arguments
 * ({@link DecoderOpChecks}) and runs {@link DecoderOps}' function on the tensors' host segments,
 * the same calls with the same arguments DecoderModel made before it went through this interface,
 * so the results are bit for bit those of DecoderOps (the oracle).
 */
final class CpuDecoderOps implements DecoderDeviceOps {
    private final CpuBackend backend;

    CpuDecoderOps(CpuBackend backend) {
        this.backend = backend;
    }

    @Override
    public CpuBackend backend() { return backend; }

    /** The projection weights this CPU path multiplies: float32, or bf16 (a frozen bf16 model). One array, passed as it is (no varargs array per call). */
    private static final DType[] WEIGHTS = {DType.F32, DType.BF16};

    private static MemorySegment data(Tensor t) {
        return t == null ? null : t.data();
    }

    /** Element {@code elements} of t onwards (a row or column offset into a row-major buffer). */
    private static MemorySegment at(Tensor t, long elements) {
        return t.data().asSlice(elements * Float.BYTES);
    }

    @Override
    public void embeddingForward(Tensor out, long[] ids, long[] positions, Tensor wte, Tensor wpe) {
        DecoderOpChecks.embeddingForward(backend, out, ids, positions, wte, wpe);
        DecoderOps.embeddingForward(out.data(), ids, positions, wte.data(), wte.dtype() == DType.BF16, data(wpe), wte.size(1));
    }

    @Override
    public void embeddingBackward(Tensor dwte, Tensor dwpe, Tensor dout, long[] ids, long[] positions) {
        DecoderOpChecks.embeddingBackward(backend, dwte, dwpe, dout, ids, positions);
        DecoderOps.embeddingBackward(dwte.data(), data(dwpe), dout.data(), ids, positions, dwte.size(1));
    }

    @Override
    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, float eps) {
        DecoderOpChecks.layerNormForward(backend, out, mean, rstd, x, w, b);
        DecoderOps.layerNormForward(out.data(), data(mean), data(rstd), x.data(), w.data(), data(b), x.rows(), x.cols(), eps);
    }

    @Override
    public void layerNormBackward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean, Tensor rstd, boolean accumulate) {
        DecoderOpChecks.layerNormBackward(backend, dx, dw, db, dout, x, w, mean, rstd);
        DecoderOps.layerNormBackward(dx.data(), dw.data(), data(db), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), x.rows(), x.cols(),
            accumulate);
    }

    /** One DecoderOps call per head (rows d wide, stride apart, from column col + h d; rstd row h at h n), as DecoderModel ran Qwen3's head norm. */
    @Override
    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor w, long n, long heads, long d, long col, long stride, float eps) {
        DecoderOpChecks.rmsNormForward(backend, out, rstd, x, w, n, heads, d, col, stride);
        for (long h = 0; h < heads; h++) {
            long c = col + h * d;
            DecoderOps.rmsNormForward(at(out, c), rstd == null ? null : at(rstd, h * n), at(x, c), w.data(), n, d, stride, eps);
        }
    }

    @Override
    public void rmsNormBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, long n, long heads, long d, long col, long stride,
                                boolean accumulate) {
        DecoderOpChecks.rmsNormBackward(backend, dx, dw, dout, x, w, rstd, n, heads, d, col, stride);
        for (long h = 0; h < heads; h++) {
            long c = col + h * d;
            DecoderOps.rmsNormBackward(at(dx, c), dw.data(), at(dout, c), at(x, c), w.data(), at(rstd, h * n), n, d, stride, accumulate);
        }
    }

    @Override
    public void ropeTables(Tensor cos, Tensor sin, long[] positions, float[] invFreq) {
        DecoderOpChecks.ropeTables(backend, cos, sin, positions, invFreq);
        DecoderOps.ropeTables(cos.data(), sin.data(), positions, invFreq);
    }

    @Override
    public void rope(Tensor x, long col, long stride, long n, long heads, Tensor cos, Tensor sin, long half, boolean inverse) {
        DecoderOpChecks.rope(backend, x, col, stride, n, heads, cos, sin, half);
        DecoderOps.rope(x.data(), col, stride, n, heads, cos.data(), sin.data(), half, inverse);
    }

    private static AttentionShape shape(Attention a) {
        return new AttentionShape(a.batch(), a.heads(), a.kvHeads(), a.hd(), a.tq(), a.tk(), a.past(), a.q().data(), a.ldQ(), a.qCol(), a.k().data(),
            a.v().data(), a.ldK(), a.kBatch(), a.kCol(), a.vCol(), a.keyMask(), a.scale());
    }

    @Override
    public void attentionScores(Attention a, Tensor probs) {
        DecoderOpChecks.attention("attentionScores", backend, a, probs);
        DecoderOps.attentionScores(shape(a), probs.data());
    }

    @Override
    public void attentionValues(Attention a, Tensor probs, Tensor out, long ldOut) {
        DecoderOpChecks.attentionValues(backend, a, probs, out, ldOut);
        DecoderOps.attentionValues(shape(a), probs.data(), out.data(), ldOut);
    }

    @Override
    public void attentionBackward(Attention a, Tensor probs, Tensor probsUsed, Tensor dprobs, Tensor dout, long ldOut, Tensor dqkv, Runnable beforeSoftmax) {
        DecoderOpChecks.attentionBackward(backend, a, probs, probsUsed, dprobs, dout, ldOut, dqkv);
        DecoderOps.attentionBackward(shape(a), probs.data(), probsUsed.data(), dprobs.data(), dout.data(), ldOut, dqkv.data(), beforeSoftmax);
    }

    @Override
    public void projectionForward(Tensor out, long col, long ldOut, Tensor x, long ldX, Tensor w, Tensor b, long n, long in, long outF, boolean storedInOut) {
        DecoderOpChecks.projection("projectionForward", backend, out, col, ldOut, x, ldX, w, b, n, in, outF, WEIGHTS);
        // bf16 weights (a frozen bf16 model): x rounded to bf16, bf16 products summed in float32 (CpuBlas.gemmBf16), as CudaDecoderOps' GemmEx path
        DecoderOps.projectionForward(out.data(), col, ldOut, x.data(), ldX, w.data(), w.dtype() == DType.BF16, data(b), n, in, outF, storedInOut);
    }

    @Override
    public void projectionBackward(Tensor dx, long ldDx, boolean accumulateDx, Tensor dw, Tensor db, Tensor dout, long col, long ldOut, Tensor x, long ldX,
                                   Tensor w, long n, long in, long outF, boolean storedInOut) {
        DecoderOpChecks.projectionBackward(backend, dx, ldDx, dw, dout, col, ldOut, x, ldX, w, db, n, in, outF);
        DecoderOps.projectionBackward(data(dx), ldDx, accumulateDx, dw.data(), data(db), dout.data(), col, ldOut, x.data(), ldX, w.data(), n, in, outF,
            storedInOut);
    }

    @Override
    public void geluForward(Tensor out, Tensor x) {
        DecoderOpChecks.gelu("geluForward", backend, out, x, null);
        DecoderOps.geluForward(out.data(), x.data(), x.numel());
    }

    @Override
    public void geluBackward(Tensor dx, Tensor dout, Tensor x) {
        DecoderOpChecks.gelu("geluBackward", backend, dx, x, dout);
        DecoderOps.geluBackward(dx.data(), dout.data(), x.data(), x.numel());
    }

    @Override
    public void swigluForward(Tensor out, Tensor gateUp) {
        DecoderOpChecks.swiglu("swigluForward", backend, out, gateUp, null);
        DecoderOps.swigluForward(out.data(), gateUp.data(), out.rows(), out.cols());
    }

    @Override
    public void swigluBackward(Tensor dgateUp, Tensor dout, Tensor gateUp) {
        DecoderOpChecks.swiglu("swigluBackward", backend, dout, gateUp, dgateUp);
        DecoderOps.swigluBackward(dgateUp.data(), dout.data(), gateUp.data(), dout.rows(), dout.cols());
    }

    @Override
    public void copyRows(Tensor dst, long dstOffset, long ldDst, Tensor src, long srcOffset, long ldSrc, long rows, long width) {
        DecoderOpChecks.copyRows(backend, dst, dstOffset, ldDst, src, srcOffset, ldSrc, rows, width);
        for (long r = 0; r < rows; r++) {
            MemorySegment.copy(src.data(), (srcOffset + r * ldSrc) * Float.BYTES, dst.data(), (dstOffset + r * ldDst) * Float.BYTES, width * Float.BYTES);
        }
    }

    @Override
    public double nextTokenLoss(Tensor logits, long[] labels, Tensor dlogits) {
        DecoderOpChecks.nextTokenLoss(backend, logits, labels, dlogits);
        return DecoderOps.nextTokenCrossEntropy(logits.data(), labels, (int) logits.size(0), logits.size(1), logits.size(2), data(dlogits));
    }

    @Override
    public void close() {} // nothing held: the segments are the tensors'
}
