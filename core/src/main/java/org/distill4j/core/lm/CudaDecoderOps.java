package org.distill4j.core.lm;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import org.distill4j.bindings.cublas.CublasException;
import org.distill4j.bindings.cublas.cublas_h;
import org.distill4j.bindings.kernels.DecoderKernels;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cuda.CudaBackend;

/**
 * The decoder's ops on a {@link CudaBackend}: the GPU twins of {@link DecoderOps}, same formulas and
 * buffer layouts, over device {@link Tensor}s (float32 unless said). Our kernels (decoder.cu through
 * {@link DecoderKernels}) for the embeddings, norms, RoPE, the masked causal softmax and the MLP
 * activations; cuBLAS for the projections (sgemm with leading dimensions; bf16 weights through
 * cublasGemmEx) and the attention products (strided-batched sgemm). Every op checks its
 * arguments here, once, then enqueues on the backend's stream and returns; nothing synchronises
 * except the host-to-device copies of token ids, positions and the padding mask.
 *
 * <p>{@link DecoderModel}'s ops on a CUDA backend ({@link DecoderDeviceOps#forBackend}); tests compare
 * each op with DecoderOps on the GPU (tests/.../GpuDecoderOpsTest, tag gpu) and the whole model with
 * the CPU's (GpuDecoderModelTest). Arguments are checked in {@link DecoderOpChecks}, shared with the
 * CPU. The kernels come from the backend's own kernel module and the gemms run on the backend's cuBLAS handle (its stream, its
 * math mode as it is at each call); the projections' gemms could move into CudaBackend's
 * gemmStridedBatched.
 *
 * <p>Determinism: every op gives the same bits on every run: no float atomics (the norms' weight
 * gradients reduce in two passes over {@link #NORM_GRAD_CHUNK}-row chunks, the embedding gradients by
 * a bucket list built on the host), and GQA's shared key/value gradients accumulate head after head
 * in order; cuBLAS is bitwise reproducible on GPUs of the same architecture and SM count (its
 * documentation's guarantee for one handle on one stream).
 *
 * <p>Not yet usable inside CUDA-graph capture: ops upload ids, masks and bucket lists with
 * synchronous copies and allocate their scratch per call.
 */
@SuppressWarnings("restricted") // FFM: views of device buffers at an element offset are zero-length segments
public final class CudaDecoderOps implements DecoderDeviceOps {
    /** Rows a block sums in pass 1 of a norm's weight gradient: fixed, so the bits do not depend on the GPU. */
    public static final long NORM_GRAD_CHUNK = 32;

    private final CudaBackend backend;
    private final DecoderKernels kernels;
    private final MemorySegment cublas;
    private boolean closed;

    /** The decoder kernels' launchers over the backend's kernel module, and the backend's cuBLAS handle. */
    public CudaDecoderOps(CudaBackend backend) {
        this.backend = backend;
        backend.context().makeCurrent(); // the launchers look their kernels up in the context's module
        this.kernels = new DecoderKernels(backend.kernelModule(), backend.context().device().multiprocessors());
        this.cublas = backend.cublasHandle();
    }

    @Override
    public CudaBackend backend() { return backend; }

    private MemorySegment s() {
        return backend.context().stream();
    }

    // ---- argument checks (once per op)

    /** Before an op runs (after its {@link DecoderOpChecks} check): not closed, and the backend's context current on this thread. */
    private void enter(String op) {
        if (closed) throw new IllegalStateException(op + ": CudaDecoderOps already closed");
        backend.context().makeCurrent();
    }

    /** A device pointer {@code elements} floats into t (a zero-length view). */
    private MemorySegment at(Tensor t, long elements) {
        return backend.offset(t.data(), elements * Float.BYTES, (t.numel() - elements) * Float.BYTES);
    }

    private static MemorySegment p(Tensor t) {
        return t == null ? MemorySegment.NULL : t.data();
    }

    private Tensor longs(Arena arena, long[] values) {
        Tensor t = backend.empty(arena, DType.I64, values.length);
        backend.writeLongs(t, values);
        return t;
    }

    // ---- embeddings

    /**
     * out [N, D] = wte [V, D] rows of ids [N] (+ wpe [P, D] rows of positions [N] when wpe is not null).
     * wte float32, or bfloat16 (a frozen bf16 model: d4j_embedding_forward_bf16 widens each value
     * exactly, as DecoderOps does; wpe stays float32). Ids and positions are checked on the host.
     */
    @Override
    public void embeddingForward(Tensor out, long[] ids, long[] positions, Tensor wte, Tensor wpe) {
        DecoderOpChecks.embeddingForward(backend, out, ids, positions, wte, wpe); // wte F32 or BF16
        enter("embeddingForward");
        long n = ids.length, d = wte.size(1), vocab = wte.size(0), maxPositions = wpe == null ? 0 : wpe.size(0);
        if (n == 0) return;
        try (Arena arena = Arena.ofConfined()) {
            Tensor idsD = longs(arena, ids), posD = wpe == null ? null : longs(arena, positions);
            kernels.embeddingForward(out.data(), idsD.data(), p(posD), wte.data(), wte.dtype() == DType.BF16, p(wpe), n, d, vocab, maxPositions, s());
        }
    }

    /** dwte [V, D] += dout [N, D] scattered to rows ids [N]; dwpe [P, D] likewise by positions (when not null). Bit-identical to DecoderOps. */
    @Override
    public void embeddingBackward(Tensor dwte, Tensor dwpe, Tensor dout, long[] ids, long[] positions) {
        DecoderOpChecks.embeddingBackward(backend, dwte, dwpe, dout, ids, positions);
        enter("embeddingBackward");
        long n = ids.length, d = dwte.size(1);
        if (n == 0) return;
        scatterAdd(dwte, dout, ids, d);
        if (dwpe != null) scatterAdd(dwpe, dout, positions, d);
    }

    /**
     * The deterministic scatter-add: token rows grouped by table row on the host (a stable sort of
     * N keys, which the host has anyway: no device sort, no atomics), one block a table row adding
     * its rows in ascending order, the float additions of DecoderOps.embeddingBackward in its order.
     */
    private void scatterAdd(Tensor table, Tensor dout, long[] keys, long d) {
        int n = keys.length;
        Integer[] boxed = new Integer[n];
        for (int i = 0; i < n; i++) boxed[i] = i;
        Arrays.sort(boxed, (a, b) -> Long.compare(keys[a], keys[b]));  // stable (a merge sort): ascending rows within a key
        long[] order = new long[n], starts = new long[n + 1], owners = new long[n];
        int buckets = 0;
        for (int k = 0; k < n; k++) {
            order[k] = boxed[k];
            if (k == 0 || keys[boxed[k]] != keys[boxed[k - 1]]) {
                starts[buckets] = k;
                owners[buckets++] = keys[boxed[k]];
            }
        }
        starts[buckets] = n;
        try (Arena arena = Arena.ofConfined()) {
            Tensor orderD = longs(arena, order), startsD = longs(arena, Arrays.copyOf(starts, buckets + 1)), ownersD = longs(arena, Arrays.copyOf(owners, buckets));
            kernels.embeddingBackward(table.data(), dout.data(), orderD.data(), startsD.data(), ownersD.data(), buckets, d, s());
        }
    }

    // ---- norms

    /** LayerNorm over x [N, D]: out [N, D]; mean, rstd [N] saved when not null; b may be null. */
    @Override
    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, float eps) {
        DecoderOpChecks.layerNormForward(backend, out, mean, rstd, x, w, b);
        enter("layerNormForward");
        long d = x.cols(), n = x.rows();
        kernels.layerNormForward(out.data(), p(mean), p(rstd), x.data(), w.data(), p(b), n, d, eps, s());
    }

    /** LayerNorm backward: dx [N, D] (+)= ..., dw [D] += sum dout xhat, db [D] += sum dout (when not null). dx may be dout. */
    @Override
    public void layerNormBackward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean, Tensor rstd, boolean accumulate) {
        DecoderOpChecks.layerNormBackward(backend, dx, dw, db, dout, x, w, mean, rstd);
        enter("layerNormBackward");
        long d = x.cols(), n = x.rows();
        if (n == 0) return;
        long chunks = (n + NORM_GRAD_CHUNK - 1) / NORM_GRAD_CHUNK;
        try (Arena arena = Arena.ofConfined()) {
            Tensor partial = backend.empty(arena, DType.F32, 2, chunks, d);
            // the weight gradients first: dx may overwrite dout
            kernels.normParamGradPartial(0, partial.data(), dout.data(), x.data(), mean.data(), rstd.data(), n, 1, d, d, NORM_GRAD_CHUNK, s());
            kernels.normParamGradFinish(partial.data(), chunks, d, dw.data(), p(db), s());
        }
        kernels.layerNormBackwardDx(dx.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), n, d, accumulate, s());
    }

    /**
     * RMSNorm over rows of width {@code d}: row (r, h) of x [N, stride] starts at column
     * {@code col + h * d} of row r (heads = 1, col = 0, d = stride: the hidden norm; Qwen3's per-head
     * q/k norm: the q or k heads of the q | k | v buffer). out has x's layout (columns outside the rows
     * untouched); rstd [heads, N] when not null.
     */
    @Override
    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor w, long n, long heads, long d, long col, long stride, float eps) {
        DecoderOpChecks.rmsNormForward(backend, out, rstd, x, w, n, heads, d, col, stride);
        enter("rmsNormForward");
        if (n == 0) return;
        kernels.rmsNormForward(at(out, col), p(rstd), at(x, col), w.data(), n, heads, d, stride, eps, s());
    }

    /** RMSNorm backward: dx (+)= rstd g - x rstd^3 mean(g x), dw [d] += sum dout x rstd; rows as the forward. dx may be dout. */
    @Override
    public void rmsNormBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, long n, long heads, long d, long col, long stride,
                                boolean accumulate) {
        DecoderOpChecks.rmsNormBackward(backend, dx, dw, dout, x, w, rstd, n, heads, d, col, stride);
        enter("rmsNormBackward");
        if (n == 0) return;
        long chunks = (n * heads + NORM_GRAD_CHUNK - 1) / NORM_GRAD_CHUNK;
        try (Arena arena = Arena.ofConfined()) {
            Tensor partial = backend.empty(arena, DType.F32, chunks, d);
            kernels.normParamGradPartial(1, partial.data(), at(dout, col), at(x, col), MemorySegment.NULL, rstd.data(), n, heads, d, stride,
                NORM_GRAD_CHUNK, s());
            kernels.normParamGradFinish(partial.data(), chunks, d, dw.data(), MemorySegment.NULL, s());
        }
        kernels.rmsNormBackwardDx(at(dx, col), at(dout, col), at(x, col), w.data(), rstd.data(), n, heads, d, stride, accumulate, s());
    }

    // ---- rotary embeddings

    /** cos, sin [N, half] for positions [N] and invFreq [half], computed on the device in float32 as DecoderOps.ropeTables. */
    @Override
    public void ropeTables(Tensor cos, Tensor sin, long[] positions, float[] invFreq) {
        DecoderOpChecks.ropeTables(backend, cos, sin, positions, invFreq);
        enter("ropeTables");
        long n = positions.length, half = invFreq.length;
        if (n == 0) return;
        try (Arena arena = Arena.ofConfined()) {
            Tensor pos = longs(arena, positions), freq = backend.empty(arena, DType.F32, half);
            backend.write(freq, invFreq);
            kernels.ropeTables(cos.data(), sin.data(), pos.data(), freq.data(), n, half, s());
        }
    }

    /** Rotates in place {@code heads} heads of width 2 * half from column col of x [N, stride]; inverse: the backward. */
    @Override
    public void rope(Tensor x, long col, long stride, long n, long heads, Tensor cos, Tensor sin, long half, boolean inverse) {
        DecoderOpChecks.rope(backend, x, col, stride, n, heads, cos, sin, half);
        enter("rope");
        kernels.rope(x.data(), col, stride, n, heads, cos.data(), sin.data(), half, inverse, s());
    }

    // ---- attention

    /**
     * probs [B, H, tq, tk] = softmax(scale q k^T) over the visible keys (causal from past, padding
     * masked; a query that sees no key gets zeros): cuBLAS for q k^T (strided-batched over the query
     * heads of one kv head, the keys' stride 0), then our masked softmax in place.
     */
    @Override
    public void attentionScores(Attention a, Tensor probs) {
        DecoderOpChecks.attention("attentionScores", backend, a, probs);
        enter("attentionScores");
        if (a.batch() == 0 || a.tq() == 0) return;
        long plane = a.tq() * a.tk();
        int g = (int) a.groups();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment one = arena.allocateFrom(JAVA_FLOAT, 1f), zero = arena.allocateFrom(JAVA_FLOAT, 0f);
            for (int b = 0; b < a.batch(); b++) {
                for (int kv = 0; kv < a.kvHeads(); kv++) {
                    int h0 = kv * g;
                    // column-major: S^T [tk, tq] = K [tk, hd] (stored as [hd, tk]^T) times Q^T
                    gemmStrided(cublas_h.CUBLAS_OP_T, cublas_h.CUBLAS_OP_N, a.tk(), a.tq(), a.hd(), one,
                        at(a.k(), b * a.kBatch() + a.kCol() + kv * a.hd()), a.ldK(), 0,
                        at(a.q(), b * a.tq() * a.ldQ() + a.qCol() + h0 * a.hd()), a.ldQ(), a.hd(), zero,
                        at(probs, ((long) b * a.heads() + h0) * plane), a.tk(), plane, g);
                }
            }
            Tensor mask = a.keyMask() == null ? null : longs(arena, a.keyMask());
            kernels.attentionSoftmax(probs.data(), probs.data(), mask == null ? MemorySegment.NULL : mask.data(), a.batch(), a.heads(), a.tq(), a.tk(),
                a.past(), a.scale(), s());
        }
    }

    /** out [B * tq, ldOut] (head h at columns h * hd) = probs [B, H, tq, tk] v. */
    @Override
    public void attentionValues(Attention a, Tensor probs, Tensor out, long ldOut) {
        DecoderOpChecks.attentionValues(backend, a, probs, out, ldOut);
        enter("attentionValues");
        if (a.batch() == 0 || a.tq() == 0) return;
        long plane = a.tq() * a.tk();
        int g = (int) a.groups();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment one = arena.allocateFrom(JAVA_FLOAT, 1f), zero = arena.allocateFrom(JAVA_FLOAT, 0f);
            for (int b = 0; b < a.batch(); b++) {
                for (int kv = 0; kv < a.kvHeads(); kv++) {
                    int h0 = kv * g;
                    // column-major: O^T [hd, tq] = V^T [hd, tk] P^T [tk, tq]
                    gemmStrided(cublas_h.CUBLAS_OP_N, cublas_h.CUBLAS_OP_N, a.hd(), a.tq(), a.tk(), one,
                        at(a.v(), b * a.kBatch() + a.vCol() + kv * a.hd()), a.ldK(), 0,
                        at(probs, ((long) b * a.heads() + h0) * plane), a.tk(), plane, zero,
                        at(out, b * a.tq() * ldOut + h0 * a.hd()), ldOut, a.hd(), g);
                }
            }
        }
    }

    /**
     * Attention backward, as DecoderOps.attentionBackward (training: tq = tk, past 0): dv += probsUsed^T
     * dout, dprobs = dout v^T, then {@code beforeSoftmax} (the caller's attention-dropout backward on
     * dprobs), dscores = scale probs (dprobs - rowsum(dprobs probs)) in place, dq += dscores k,
     * dk += dscores^T q. dq, dk, dv go to dqkv (the q | k | v layout, zeroed by the caller). Query
     * heads that share a kv head add into its dk and dv one after another, in head order (one gemm a
     * head, beta 1): no two gemms write the same memory at once, and the bits do not vary.
     */
    @Override
    public void attentionBackward(Attention a, Tensor probs, Tensor probsUsed, Tensor dprobs, Tensor dout, long ldOut, Tensor dqkv,
                                  Runnable beforeSoftmax) {
        DecoderOpChecks.attentionBackward(backend, a, probs, probsUsed, dprobs, dout, ldOut, dqkv);
        enter("attentionBackward");
        if (a.batch() == 0) return;
        long plane = a.tq() * a.tk();
        int g = (int) a.groups();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment one = arena.allocateFrom(JAVA_FLOAT, 1f), zero = arena.allocateFrom(JAVA_FLOAT, 0f);
            for (int b = 0; b < a.batch(); b++) {
                for (int h = 0; h < a.heads(); h++) {
                    long kvOff = b * a.kBatch() + (h / g) * a.hd();
                    MemorySegment d = at(dout, b * a.tq() * ldOut + h * a.hd());
                    // dv [tk, hd] += probsUsed^T dout: column-major dV^T [hd, tk] = dO^T [hd, tq] Pu [tq, tk]
                    gemmStrided(cublas_h.CUBLAS_OP_N, cublas_h.CUBLAS_OP_T, a.hd(), a.tk(), a.tq(), one, d, ldOut, 0,
                        at(probsUsed, ((long) b * a.heads() + h) * plane), a.tk(), 0, one, at(dqkv, kvOff + a.vCol()), a.ldK(), 0, 1);
                }
                for (int kv = 0; kv < a.kvHeads(); kv++) {
                    int h0 = kv * g;
                    // dprobs [tq, tk] = dout v^T: column-major dP^T [tk, tq] = V [tk, hd] dO^T
                    gemmStrided(cublas_h.CUBLAS_OP_T, cublas_h.CUBLAS_OP_N, a.tk(), a.tq(), a.hd(), one,
                        at(a.v(), b * a.kBatch() + a.vCol() + kv * a.hd()), a.ldK(), 0,
                        at(dout, b * a.tq() * ldOut + h0 * a.hd()), ldOut, a.hd(), zero,
                        at(dprobs, ((long) b * a.heads() + h0) * plane), a.tk(), plane, g);
                }
            }
            beforeSoftmax.run();
            kernels.attentionSoftmaxBackward(dprobs.data(), dprobs.data(), probs.data(), (long) a.batch() * a.heads() * a.tq(), a.tk(), a.scale(), s());
            for (int b = 0; b < a.batch(); b++) {
                for (int kv = 0; kv < a.kvHeads(); kv++) {
                    int h0 = kv * g;
                    // dq [tq, hd] += dscores k: column-major dQ^T [hd, tq] = K^T [hd, tk] dS^T [tk, tq]; heads apart, batched
                    gemmStrided(cublas_h.CUBLAS_OP_N, cublas_h.CUBLAS_OP_N, a.hd(), a.tq(), a.tk(), one,
                        at(a.k(), b * a.kBatch() + a.kCol() + kv * a.hd()), a.ldK(), 0,
                        at(dprobs, ((long) b * a.heads() + h0) * plane), a.tk(), plane, one,
                        at(dqkv, b * a.tq() * a.ldQ() + a.qCol() + h0 * a.hd()), a.ldQ(), a.hd(), g);
                }
                for (int h = 0; h < a.heads(); h++) {
                    long kvOff = b * a.kBatch() + (h / g) * a.hd();
                    // dk [tk, hd] += dscores^T q: column-major dK^T [hd, tk] = Q^T [hd, tq] dS [tq, tk]
                    gemmStrided(cublas_h.CUBLAS_OP_N, cublas_h.CUBLAS_OP_T, a.hd(), a.tk(), a.tq(), one,
                        at(a.q(), b * a.tq() * a.ldQ() + a.qCol() + h * a.hd()), a.ldQ(), 0,
                        at(dprobs, ((long) b * a.heads() + h) * plane), a.tk(), 0, one, at(dqkv, kvOff + a.kCol()), a.ldK(), 0, 1);
                }
            }
        }
    }

    /**
     * cuBLAS column-major C = alpha op(A) op(B) + beta C over {@code batch} matrices at the given
     * element strides (a stride of 0 shares one operand). Our row-major operands are read as their
     * column-major transposes with the same leading dimension; the callers' comments give the algebra.
     * Belongs in CudaBackend's gemm API (strided operands, leading dimensions) once it has one.
     */
    private void gemmStrided(int opA, int opB, long m, long n, long k, MemorySegment alpha, MemorySegment aPtr, long lda, long strideA,
                             MemorySegment bPtr, long ldb, long strideB, MemorySegment beta, MemorySegment cPtr, long ldc, long strideC, int batch) {
        if (batch == 1) {
            CublasException.check(cublas_h.cublasSgemm_v2(cublas, opA, opB, (int) m, (int) n, (int) k, alpha, aPtr, (int) lda, bPtr, (int) ldb, beta, cPtr,
                (int) ldc), "cublasSgemm");
        } else {
            CublasException.check(cublas_h.cublasSgemmStridedBatched(cublas, opA, opB, (int) m, (int) n, (int) k, alpha, aPtr, (int) lda,
                strideA, bPtr, (int) ldb, strideB, beta, cPtr, (int) ldc, strideC, batch), "cublasSgemmStridedBatched");
        }
    }

    // ---- projections (cuBLAS; float32 weights through sgemm, bfloat16 weights through cublasGemmEx)

    /**
     * out [N, outF] (columns [col, col + outF) of rows of ldOut) = x [N, in] (rows of ldX) W^T + b for
     * W [outF, in] (nn.Linear), or x W for W [in, outF] (GPT-2's Conv1D), as DecoderOps.projectionForward.
     * W float32: cublasSgemm. W bfloat16: x is rounded to bf16 (d4j_f32_to_bf16, into scratch) and
     * cublasGemmEx multiplies bf16 x bf16 into float32 with float32 accumulation (CUBLAS_COMPUTE_32F),
     * as PyTorch's bf16 autocast does: the products of two bf16 values are exact in float32, so the
     * only rounding beyond float32 is x's.
     */
    @Override
    public void projectionForward(Tensor out, long col, long ldOut, Tensor x, long ldX, Tensor w, Tensor b, long n, long in, long outF,
                                  boolean storedInOut) {
        DecoderOpChecks.projection("projectionForward", backend, out, col, ldOut, x, ldX, w, b, n, in, outF, DType.F32, DType.BF16);
        enter("projectionForward");
        if (n == 0) return;
        // column-major: out^T [outF, N] = W-as-stored (transposed for nn.Linear) times x^T [in, N]
        int opW = storedInOut ? cublas_h.CUBLAS_OP_N : cublas_h.CUBLAS_OP_T;
        int ldW = (int) (storedInOut ? outF : in);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment one = arena.allocateFrom(JAVA_FLOAT, 1f), zero = arena.allocateFrom(JAVA_FLOAT, 0f);
            if (w.dtype() == DType.F32) {
                CublasException.check(cublas_h.cublasSgemm_v2(cublas, opW, cublas_h.CUBLAS_OP_N, (int) outF, (int) n, (int) in, one, w.data(), ldW, x.data(),
                    (int) ldX, zero, at(out, col), (int) ldOut), "cublasSgemm(projection)");
            } else {
                Tensor xb = backend.empty(arena, DType.BF16, n, in);
                kernels.f32ToBf16(xb.data(), x.data(), n, in, ldX, s());
                CublasException.check(cublas_h.cublasGemmEx(cublas, opW, cublas_h.CUBLAS_OP_N, (int) outF, (int) n, (int) in, one, w.data(),
                    cublas_h.CUDA_R_16BF, ldW, xb.data(), cublas_h.CUDA_R_16BF, (int) in, zero, at(out, col), cublas_h.CUDA_R_32F, (int) ldOut,
                    cublas_h.CUBLAS_COMPUTE_32F, cublas_h.CUBLAS_GEMM_DEFAULT), "cublasGemmEx(bf16 projection)");
            }
        }
        if (b != null) kernels.biasAddStrided(at(out, col), b.data(), n, outF, ldOut, s());
    }

    /**
     * Projection backward, as DecoderOps.projectionBackward: dW += dout^T x ([outF, in]) or x^T dout
     * ([in, outF]); db [outF] += column sums of dout (rows in order: deterministic); dx [N, in] (rows
     * of ldDx) = dout W (or dout W^T), added when {@code accumulateDx}; dx may be null. Float32 weights
     * and gradients only (a bf16 model trains a float32 master copy).
     */
    @Override
    public void projectionBackward(Tensor dx, long ldDx, boolean accumulateDx, Tensor dw, Tensor db, Tensor dout, long col, long ldOut, Tensor x, long ldX,
                                   Tensor w, long n, long in, long outF, boolean storedInOut) {
        DecoderOpChecks.projectionBackward(backend, dx, ldDx, dw, dout, col, ldOut, x, ldX, w, db, n, in, outF);
        enter("projectionBackward");
        if (n == 0) return;
        MemorySegment g = at(dout, col);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment one = arena.allocateFrom(JAVA_FLOAT, 1f), beta = arena.allocateFrom(JAVA_FLOAT, accumulateDx ? 1f : 0f);
            if (storedInOut) {
                // dW [in, outF] (column-major [outF, in]) += dout^T-as-stored [outF, N] x [N, in]
                CublasException.check(cublas_h.cublasSgemm_v2(cublas, cublas_h.CUBLAS_OP_N, cublas_h.CUBLAS_OP_T, (int) outF, (int) in, (int) n, one, g,
                    (int) ldOut, x.data(), (int) ldX, one, dw.data(), (int) outF), "cublasSgemm(projection dW)");
            } else {
                // dW [outF, in] (column-major [in, outF]) += x^T-as-stored [in, N] dout [N, outF]
                CublasException.check(cublas_h.cublasSgemm_v2(cublas, cublas_h.CUBLAS_OP_N, cublas_h.CUBLAS_OP_T, (int) in, (int) outF, (int) n, one,
                    x.data(), (int) ldX, g, (int) ldOut, one, dw.data(), (int) in), "cublasSgemm(projection dW)");
            }
            if (dx != null) {
                // dx^T [in, N] = W^T dout^T (nn.Linear: W-as-stored [in, outF] column-major) or W dout^T (Conv1D, transposed)
                int opW = storedInOut ? cublas_h.CUBLAS_OP_T : cublas_h.CUBLAS_OP_N;
                CublasException.check(cublas_h.cublasSgemm_v2(cublas, opW, cublas_h.CUBLAS_OP_N, (int) in, (int) n, (int) outF, one, w.data(),
                    (int) (storedInOut ? outF : in), g, (int) ldOut, beta, dx.data(), (int) ldDx), "cublasSgemm(projection dx)");
            }
        }
        if (db != null) kernels.biasGradStrided(db.data(), g, n, outF, ldOut, s());
    }

    // ---- MLP activations

    /** out = gelu_tanh(x), x and out of the same size. out may be x. */
    @Override
    public void geluForward(Tensor out, Tensor x) {
        DecoderOpChecks.gelu("geluForward", backend, out, x, null);
        enter("geluForward");
        kernels.geluTanhForward(out.data(), x.data(), x.numel(), s());
    }

    /** dx = gelu_tanh'(x) dout; dx may be dout. */
    @Override
    public void geluBackward(Tensor dx, Tensor dout, Tensor x) {
        DecoderOpChecks.gelu("geluBackward", backend, dx, x, dout);
        enter("geluBackward");
        kernels.geluTanhBackward(dx.data(), dout.data(), x.data(), x.numel(), s());
    }

    /** out [N, F] = silu(gate) * up from gateUp [N, 2F] (gate in columns [0, F), up in [F, 2F)). */
    @Override
    public void swigluForward(Tensor out, Tensor gateUp) {
        DecoderOpChecks.swiglu("swigluForward", backend, out, gateUp, null);
        enter("swigluForward");
        long n = out.rows(), f = out.cols();
        kernels.swigluForward(out.data(), gateUp.data(), n, f, s());
    }

    /** dgateUp [N, 2F] from dout [N, F]. */
    @Override
    public void swigluBackward(Tensor dgateUp, Tensor dout, Tensor gateUp) {
        DecoderOpChecks.swiglu("swigluBackward", backend, dout, gateUp, dgateUp);
        enter("swigluBackward");
        long n = dout.rows(), f = dout.cols();
        kernels.swigluBackward(dgateUp.data(), dout.data(), gateUp.data(), n, f, s());
    }

    // ---- loss

    /**
     * Mean next-token cross-entropy as DecoderOps.nextTokenCrossEntropy: logits [B, T, V] at position
     * t predict labels[b, t + 1] (-100 and the last position do not count). The backend's
     * cross-entropy kernels on labels shifted on the host; loss [1] on the device (NaN when nothing
     * counts, or a label is outside the vocabulary); dlogits (same shape, may be null) = (softmax -
     * onehot) / count at counted positions, 0 elsewhere.
     */
    public void nextTokenCrossEntropy(Tensor logits, long[] labels, Tensor loss, Tensor dlogits) {
        String op = "nextTokenCrossEntropy";
        DecoderOpChecks.nextTokenLoss(backend, logits, labels, dlogits);
        DecoderOpChecks.f32(op, backend, loss);
        DecoderOpChecks.numel(op, "loss", loss, 1);
        enter(op);
        long batch = logits.size(0), t = logits.size(1), vocab = logits.size(2);
        long[] shifted = new long[labels.length];
        for (long b = 0; b < batch; b++) {
            for (long i = 0; i < t; i++) shifted[(int) (b * t + i)] = i + 1 < t ? labels[(int) (b * t + i + 1)] : -100;
        }
        try (Arena arena = Arena.ofConfined()) {
            Tensor y = longs(arena, shifted);
            backend.crossEntropy(logits.view(batch * t, vocab), y, -100, 0f, loss, dlogits == null ? null : dlogits.view(batch * t, vocab));
        }
    }

    /**
     * {@link #nextTokenCrossEntropy} read back to the host (it synchronises). dlogits may be logits
     * itself: the gradient then goes through a scratch buffer and is copied over the logits, since the
     * cross-entropy kernels read a row's logits while they write its gradient.
     */
    @Override
    public double nextTokenLoss(Tensor logits, long[] labels, Tensor dlogits) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor loss = backend.empty(arena, DType.F32, 1);
            boolean inPlace = dlogits != null && dlogits.data().address() == logits.data().address();
            Tensor grad = inPlace ? backend.empty(arena, DType.F32, logits.shape()) : dlogits;
            nextTokenCrossEntropy(logits, labels, loss, grad);
            if (inPlace) backend.copy(grad, dlogits);
            return backend.read(loss)[0];
        }
    }

    // ---- copies

    /** Row by row device-to-device copies on the backend's stream (one per row: a KV-cache append copies B * T rows a layer). */
    @Override
    public void copyRows(Tensor dst, long dstOffset, long ldDst, Tensor src, long srcOffset, long ldSrc, long rows, long width) {
        DecoderOpChecks.copyRows(backend, dst, dstOffset, ldDst, src, srcOffset, ldSrc, rows, width);
        enter("copyRows");
        if (width == 0) return;
        if (width == ldSrc && width == ldDst) { // contiguous: one copy
            backend.copy(row(src, srcOffset, rows * width), row(dst, dstOffset, rows * width));
            return;
        }
        for (long r = 0; r < rows; r++) backend.copy(row(src, srcOffset + r * ldSrc, width), row(dst, dstOffset + r * ldDst, width));
    }

    /** A [count] float32 view of t from element {@code from} (no copy). */
    private Tensor row(Tensor t, long from, long count) {
        return Tensor.wrap(backend, DType.F32, new long[] {count}, at(t, from), null);
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true; // the module and the cuBLAS handle are the backend's
    }
}
