package org.distill4j.core.lm;

import org.distill4j.core.Backend;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;

/**
 * The decoder's ops over {@link Tensor}s of one backend: what {@link DecoderModel} calls, so the
 * same model code runs on the CPU ({@link CpuDecoderOps}: {@link DecoderOps}' formulas on the
 * tensors' host memory) and on CUDA ({@link CudaDecoderOps}: our kernels and cuBLAS over device
 * memory). Both implementations compute the same formulas over the same buffer layouts; each op
 * checks its arguments once, in {@link DecoderOpChecks}, before it runs.
 *
 * <p>Conventions (as {@link DecoderOps}): N token rows (B * T), float32 unless said; backward
 * functions accumulate (+=) into parameter gradients and write (=) input gradients unless they say
 * otherwise. Token ids, positions and masks are host arrays (the model has them on the host; CUDA
 * uploads them).
 */
public interface DecoderDeviceOps extends AutoCloseable {
    /** The ops for {@code backend}: CpuBackend's or CudaBackend's; any other backend is refused in one line. */
    static DecoderDeviceOps forBackend(Backend backend) {
        if (backend instanceof CpuBackend cpu) return new CpuDecoderOps(cpu);
        if (backend instanceof CudaBackend cuda) return new CudaDecoderOps(cuda);
        throw new UnsupportedOperationException("decoder models run on the CPU and CUDA backends, not on " + backend.name());
    }

    /** The backend whose tensors these ops take. */
    Backend backend();

    /**
     * Where a sequence's queries, keys and values live. Query i of batch b (this call's token i, at
     * absolute position past + i) at q[(b * tq + i) * ldQ + qCol + h * hd]; key j of kv head g at
     * k[b * kBatch + j * ldK + kCol + g * hd], values likewise at vCol (k and v may be the same tensor
     * as q: the q | k | v buffer). Query head h reads kv head h / (heads / kvHeads) (GQA); query i
     * sees keys j <= past + i whose keyMask [B, tk] entry is not 0 (keyMask null: every key is real).
     */
    record Attention(int batch, int heads, int kvHeads, long hd, long tq, long tk, long past, Tensor q, long ldQ, long qCol, Tensor k,
                     Tensor v, long ldK, long kBatch, long kCol, long vCol, long[] keyMask, float scale) {
        long groups() { return heads / kvHeads; }
    }

    // ---- embeddings

    /** out [N, D] = wte [V, D] rows of ids [N] (+ wpe [P, D] rows of positions [N] when wpe is not null). */
    void embeddingForward(Tensor out, long[] ids, long[] positions, Tensor wte, Tensor wpe);

    /** dwte [V, D] += dout [N, D] scattered to rows ids [N]; dwpe [P, D] likewise by positions (when not null). */
    void embeddingBackward(Tensor dwte, Tensor dwpe, Tensor dout, long[] ids, long[] positions);

    // ---- norms

    /** LayerNorm over x [N, D]: out [N, D]; mean, rstd [N]; b may be null. */
    void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, float eps);

    /** LayerNorm backward: dx [N, D] (+)= ..., dw [D] += sum dout xhat, db [D] += sum dout (when not null). */
    void layerNormBackward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean, Tensor rstd, boolean accumulate);

    /**
     * RMSNorm over rows of width {@code d}: row (r, h) of x [N, stride] starts at column
     * {@code col + h * d} of row r (heads = 1, col = 0, d = stride: the hidden norm; Qwen3's per-head
     * q/k norm: the q or k heads of the q | k | v buffer). out has x's layout; rstd [heads, N].
     */
    void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor w, long n, long heads, long d, long col, long stride, float eps);

    /** RMSNorm backward, rows as the forward: dx (+)= rstd g - x rstd^3 mean(g x), dw [d] += sum dout x rstd. dx may be dout. */
    void rmsNormBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, long n, long heads, long d, long col, long stride,
                         boolean accumulate);

    // ---- rotary embeddings

    /** cos, sin [N, half] for positions [N] and invFreq [half], in float32 as transformers computes them. */
    void ropeTables(Tensor cos, Tensor sin, long[] positions, float[] invFreq);

    /** Rotates in place {@code heads} heads of width 2 * half from column col of x [N, stride]; inverse: the backward. */
    void rope(Tensor x, long col, long stride, long n, long heads, Tensor cos, Tensor sin, long half, boolean inverse);

    // ---- attention

    /** probs [B, H, tq, tk] = softmax(scale q k^T) over the visible keys (a query that sees none gets zeros). */
    void attentionScores(Attention a, Tensor probs);

    /** out [B * tq, ldOut] (head h at columns h * hd) = probs [B, H, tq, tk] v. */
    void attentionValues(Attention a, Tensor probs, Tensor out, long ldOut);

    /**
     * Attention backward, training only (tq = tk, past 0): dv += probsUsed^T dout, dprobs = dout v^T,
     * then {@code beforeSoftmax} (the caller's attention-dropout backward on dprobs), dscores = scale
     * probs (dprobs - rowsum(dprobs probs)), dq += dscores k, dk += dscores^T q, into dqkv (the
     * q | k | v layout, zeroed by the caller).
     */
    void attentionBackward(Attention a, Tensor probs, Tensor probsUsed, Tensor dprobs, Tensor dout, long ldOut, Tensor dqkv, Runnable beforeSoftmax);

    // ---- projections

    /**
     * out [N, outF] (columns [col, col + outF) of rows of ldOut) = x [N, in] (rows of ldX) W^T + b for
     * W [outF, in] (nn.Linear), or x W for W [in, outF] (GPT-2's Conv1D). w is the weight tensor as
     * the model holds it (its dtype is the implementation's to accept or refuse).
     */
    void projectionForward(Tensor out, long col, long ldOut, Tensor x, long ldX, Tensor w, Tensor b, long n, long in, long outF, boolean storedInOut);

    /** Projection backward: dW += ..., db [outF] += column sums of dout, dx [N, in] (rows of ldDx) (+)= dout W; dx may be null. */
    void projectionBackward(Tensor dx, long ldDx, boolean accumulateDx, Tensor dw, Tensor db, Tensor dout, long col, long ldOut, Tensor x, long ldX,
                            Tensor w, long n, long in, long outF, boolean storedInOut);

    // ---- MLP activations

    /** out = gelu_tanh(x), same sizes; out may be x. */
    void geluForward(Tensor out, Tensor x);

    /** dx = gelu_tanh'(x) dout; dx may be dout. */
    void geluBackward(Tensor dx, Tensor dout, Tensor x);

    /** out [N, F] = silu(gate) * up from gateUp [N, 2F] (gate in columns [0, F), up in [F, 2F)). */
    void swigluForward(Tensor out, Tensor gateUp);

    /** dgateUp [N, 2F] from dout [N, F]. */
    void swigluBackward(Tensor dgateUp, Tensor dout, Tensor gateUp);

    // ---- copies and loss

    /**
     * Copies {@code rows} rows of {@code width} floats: row r from element {@code srcOffset + r * ldSrc}
     * of src to element {@code dstOffset + r * ldDst} of dst (the KV cache's append of this call's keys
     * and values out of the q | k | v buffer).
     */
    void copyRows(Tensor dst, long dstOffset, long ldDst, Tensor src, long srcOffset, long ldSrc, long rows, long width);

    /**
     * Mean next-token cross-entropy (transformers' causal LM loss): logits [B, T, V] at position t
     * predict labels[b, t + 1] (-100 and the last position do not count); returns the loss (NaN when
     * nothing counts). dlogits (same shape, or null) = (softmax - onehot) / count at counted
     * positions, 0 elsewhere; it may be logits itself.
     */
    double nextTokenLoss(Tensor logits, long[] labels, Tensor dlogits);

    /** Releases what the ops hold (not the backend's). */
    @Override
    void close();
}
