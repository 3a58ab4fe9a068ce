package org.distill4j.bindings.kernels;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import org.distill4j.bindings.cuda.CudaException;
import org.distill4j.bindings.cuda.cuda_h;

/**
 * Typed launchers for native/src/main/cuda/decoder.cu (the decoder's norms, RoPE, masked softmax,
 * embeddings and MLP activations), one method per kernel, arguments in the kernel's order. Buffers
 * are device pointers (zero-length, arena-bound segments; {@link MemorySegment#NULL} where a kernel
 * takes an optional one); counts are elements. Three launch shapes: grid-stride over elements, one
 * warp a row (8 rows a 256-thread block), and one block a bucket or chunk. No argument checks beyond
 * the launch geometry: the caller (core's CudaDecoderOps) checks shapes once.
 */
public final class DecoderKernels {
    public static final int BLOCK = 256;
    /** Rows a block handles in the one-warp-a-row kernels. */
    public static final int ROWS_PER_BLOCK = BLOCK / 32;
    /** Every kernel this class launches, as named in the fatbin (KernelImage.kernelNames() must hold them all). */
    public static final List<String> KERNELS = List.of("d4j_embedding_forward", "d4j_embedding_forward_bf16", "d4j_embedding_backward", "d4j_layernorm_forward",
        "d4j_layernorm_backward_dx", "d4j_rmsnorm_forward", "d4j_rmsnorm_backward_dx", "d4j_norm_param_grad_partial", "d4j_norm_param_grad_finish",
        "d4j_rope_tables", "d4j_rope", "d4j_attention_softmax", "d4j_attention_softmax_backward", "d4j_gelu_tanh_forward", "d4j_gelu_tanh_backward",
        "d4j_swiglu_forward", "d4j_swiglu_backward", "d4j_f32_to_bf16", "d4j_bias_add_strided", "d4j_bias_grad_strided");

    private final int maxBlocks;
    private final MemorySegment embeddingForward, embeddingForwardBf16, embeddingBackward, layerNormForward, layerNormBackwardDx, rmsNormForward, rmsNormBackwardDx,
        normParamGradPartial, normParamGradFinish, ropeTables, rope, attentionSoftmax, attentionSoftmaxBackward, geluForward, geluBackward,
        swigluForward, swigluBackward, f32ToBf16, biasAddStrided, biasGradStrided;

    public DecoderKernels(KernelModule module, int multiprocessors) {
        this.maxBlocks = Math.max(1, multiprocessors) * 32;
        embeddingForward = module.function("d4j_embedding_forward");
        embeddingForwardBf16 = module.function("d4j_embedding_forward_bf16");
        embeddingBackward = module.function("d4j_embedding_backward");
        layerNormForward = module.function("d4j_layernorm_forward");
        layerNormBackwardDx = module.function("d4j_layernorm_backward_dx");
        rmsNormForward = module.function("d4j_rmsnorm_forward");
        rmsNormBackwardDx = module.function("d4j_rmsnorm_backward_dx");
        normParamGradPartial = module.function("d4j_norm_param_grad_partial");
        normParamGradFinish = module.function("d4j_norm_param_grad_finish");
        ropeTables = module.function("d4j_rope_tables");
        rope = module.function("d4j_rope");
        attentionSoftmax = module.function("d4j_attention_softmax");
        attentionSoftmaxBackward = module.function("d4j_attention_softmax_backward");
        geluForward = module.function("d4j_gelu_tanh_forward");
        geluBackward = module.function("d4j_gelu_tanh_backward");
        swigluForward = module.function("d4j_swiglu_forward");
        swigluBackward = module.function("d4j_swiglu_backward");
        f32ToBf16 = module.function("d4j_f32_to_bf16");
        biasAddStrided = module.function("d4j_bias_add_strided");
        biasGradStrided = module.function("d4j_bias_grad_strided");
    }

    private interface Args { LaunchArgs fill(Arena a); }

    /** Grid-stride over n elements. */
    private void elements(MemorySegment fn, String name, long n, MemorySegment stream, Args args) {
        if (n <= 0) return;
        launch(fn, name, (int) Math.min(maxBlocks, (n + BLOCK - 1) / BLOCK), stream, args);
    }

    /** One warp a row. */
    private void warpRows(MemorySegment fn, String name, long rows, MemorySegment stream, Args args) {
        if (rows <= 0) return;
        launch(fn, name, (int) Math.min(maxBlocks, (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK), stream, args);
    }

    /** One block an item (bucket, chunk), blocks striding over them. */
    private void blocks(MemorySegment fn, String name, long items, MemorySegment stream, Args args) {
        if (items <= 0) return;
        launch(fn, name, (int) Math.min(maxBlocks, items), stream, args);
    }

    private static void launch(MemorySegment fn, String name, int blocks, MemorySegment stream, Args args) {
        try (Arena a = Arena.ofConfined()) {
            LaunchArgs la = args.fill(a);
            CudaException.check(cuda_h.cuLaunchKernel(fn, blocks, 1, 1, BLOCK, 1, 1, 0, stream, la.segment(), MemorySegment.NULL),
                "cuLaunchKernel(" + name + ")");
        }
    }

    private static LaunchArgs optional(LaunchArgs la, MemorySegment p) {
        return p.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(p);
    }

    /**
     * out [rows, d] float32 = wte[ids] (+ wpe[positions] when wpe is not NULL); ids, positions int64 [rows]; a bad id or position gives a
     * NaN row. wte float32, or bfloat16 when {@code wteBf16} (d4j_embedding_forward_bf16: each value widened exactly; wpe stays float32).
     */
    public void embeddingForward(MemorySegment out, MemorySegment ids, MemorySegment positions, MemorySegment wte, boolean wteBf16, MemorySegment wpe,
                                 long rows, long d, long vocab, long maxPositions, MemorySegment s) {
        MemorySegment fn = wteBf16 ? embeddingForwardBf16 : embeddingForward;
        elements(fn, wteBf16 ? "d4j_embedding_forward_bf16" : "d4j_embedding_forward", rows * d, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 9).pointer(out).pointer(ids);
            la = optional(la, positions).pointer(wte);
            return optional(la, wpe).i64(rows).i64(d).i64(vocab).i64(maxPositions);
        });
    }

    /** dtable [*, d] += dout rows by bucket: order [N], starts [buckets + 1], owners [buckets], all int64. */
    public void embeddingBackward(MemorySegment dtable, MemorySegment dout, MemorySegment order, MemorySegment starts, MemorySegment owners,
                                  long buckets, long d, MemorySegment s) {
        blocks(embeddingBackward, "d4j_embedding_backward", buckets, s,
            a -> new LaunchArgs(a, 7).pointer(dtable).pointer(dout).pointer(order).pointer(starts).pointer(owners).i64(buckets).i64(d));
    }

    /** mean, rstd [n] and b [d] may be NULL. */
    public void layerNormForward(MemorySegment out, MemorySegment mean, MemorySegment rstd, MemorySegment x, MemorySegment w, MemorySegment b,
                                 long n, long d, float eps, MemorySegment s) {
        warpRows(layerNormForward, "d4j_layernorm_forward", n, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 9).pointer(out);
            la = optional(optional(la, mean), rstd).pointer(x).pointer(w);
            return optional(la, b).i64(n).i64(d).f32(eps);
        });
    }

    public void layerNormBackwardDx(MemorySegment dx, MemorySegment dout, MemorySegment x, MemorySegment w, MemorySegment mean, MemorySegment rstd,
                                    long n, long d, boolean accumulate, MemorySegment s) {
        warpRows(layerNormBackwardDx, "d4j_layernorm_backward_dx", n, s,
            a -> new LaunchArgs(a, 9).pointer(dx).pointer(dout).pointer(x).pointer(w).pointer(mean).pointer(rstd).i64(n).i64(d).i32(accumulate ? 1 : 0));
    }

    /** Rows (r, h) at x[r * stride + h * d]; rstd [heads, n] may be NULL. */
    public void rmsNormForward(MemorySegment out, MemorySegment rstd, MemorySegment x, MemorySegment w, long n, long heads, long d, long stride,
                               float eps, MemorySegment s) {
        warpRows(rmsNormForward, "d4j_rmsnorm_forward", n * heads, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 9).pointer(out);
            return optional(la, rstd).pointer(x).pointer(w).i64(n).i64(heads).i64(d).i64(stride).f32(eps);
        });
    }

    public void rmsNormBackwardDx(MemorySegment dx, MemorySegment dout, MemorySegment x, MemorySegment w, MemorySegment rstd, long n, long heads,
                                  long d, long stride, boolean accumulate, MemorySegment s) {
        warpRows(rmsNormBackwardDx, "d4j_rmsnorm_backward_dx", n * heads, s,
            a -> new LaunchArgs(a, 10).pointer(dx).pointer(dout).pointer(x).pointer(w).pointer(rstd).i64(n).i64(heads).i64(d).i64(stride)
                .i32(accumulate ? 1 : 0));
    }

    /**
     * Pass 1 of a norm's weight (and bias) gradient: partial [chunks, d] (LayerNorm: [2, chunks, d])
     * with chunks = ceil(n * heads / chunk). kind 0 LayerNorm (mean needed), 1 RMSNorm (mean NULL).
     */
    public void normParamGradPartial(int kind, MemorySegment partial, MemorySegment dout, MemorySegment x, MemorySegment mean, MemorySegment rstd,
                                     long n, long heads, long d, long stride, long chunk, MemorySegment s) {
        long chunks = (n * heads + chunk - 1) / chunk;
        blocks(normParamGradPartial, "d4j_norm_param_grad_partial", chunks, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 11).i32(kind).pointer(partial).pointer(dout).pointer(x);
            return optional(la, mean).pointer(rstd).i64(n).i64(heads).i64(d).i64(stride).i64(chunk);
        });
    }

    /** Pass 2: dw [d] += column sums of the partials; db [d] likewise (LayerNorm with a bias; else NULL). */
    public void normParamGradFinish(MemorySegment partial, long chunks, long d, MemorySegment dw, MemorySegment db, MemorySegment s) {
        elements(normParamGradFinish, "d4j_norm_param_grad_finish", d, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 5).pointer(partial).i64(chunks).i64(d).pointer(dw);
            return optional(la, db);
        });
    }

    /** cos, sin [n, half] from positions int64 [n] and invFreq float [half]. */
    public void ropeTables(MemorySegment cos, MemorySegment sin, MemorySegment positions, MemorySegment invFreq, long n, long half, MemorySegment s) {
        elements(ropeTables, "d4j_rope_tables", n * half, s,
            a -> new LaunchArgs(a, 6).pointer(cos).pointer(sin).pointer(positions).pointer(invFreq).i64(n).i64(half));
    }

    /** In place on heads of width 2 * half from column col of x [n, stride]; inverse: the backward. */
    public void rope(MemorySegment x, long col, long stride, long n, long heads, MemorySegment cos, MemorySegment sin, long half, boolean inverse,
                     MemorySegment s) {
        elements(rope, "d4j_rope", n * heads * half, s,
            a -> new LaunchArgs(a, 9).pointer(x).i64(col).i64(stride).i64(n).i64(heads).pointer(cos).pointer(sin).i64(half).i32(inverse ? 1 : 0));
    }

    /** probs [B, H, tq, tk] = masked causal softmax(scale * scores); keyMask int64 [B, tk] or NULL; probs may be scores. */
    public void attentionSoftmax(MemorySegment probs, MemorySegment scores, MemorySegment keyMask, long batch, long heads, long tq, long tk, long past,
                                 float scale, MemorySegment s) {
        warpRows(attentionSoftmax, "d4j_attention_softmax", batch * heads * tq, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 9).pointer(probs).pointer(scores);
            return optional(la, keyMask).i64(batch).i64(heads).i64(tq).i64(tk).i64(past).f32(scale);
        });
    }

    /** dscores = scale * probs (dprobs - rowsum(dprobs probs)); dscores may be dprobs. */
    public void attentionSoftmaxBackward(MemorySegment dscores, MemorySegment dprobs, MemorySegment probs, long rows, long tk, float scale,
                                         MemorySegment s) {
        warpRows(attentionSoftmaxBackward, "d4j_attention_softmax_backward", rows, s,
            a -> new LaunchArgs(a, 6).pointer(dscores).pointer(dprobs).pointer(probs).i64(rows).i64(tk).f32(scale));
    }

    public void geluTanhForward(MemorySegment out, MemorySegment x, long count, MemorySegment s) {
        elements(geluForward, "d4j_gelu_tanh_forward", count, s, a -> new LaunchArgs(a, 3).pointer(out).pointer(x).i64(count));
    }

    public void geluTanhBackward(MemorySegment dx, MemorySegment dout, MemorySegment x, long count, MemorySegment s) {
        elements(geluBackward, "d4j_gelu_tanh_backward", count, s, a -> new LaunchArgs(a, 4).pointer(dx).pointer(dout).pointer(x).i64(count));
    }

    public void swigluForward(MemorySegment out, MemorySegment gateUp, long n, long features, MemorySegment s) {
        elements(swigluForward, "d4j_swiglu_forward", n * features, s, a -> new LaunchArgs(a, 4).pointer(out).pointer(gateUp).i64(n).i64(features));
    }

    public void swigluBackward(MemorySegment dgateUp, MemorySegment dout, MemorySegment gateUp, long n, long features, MemorySegment s) {
        elements(swigluBackward, "d4j_swiglu_backward", n * features, s,
            a -> new LaunchArgs(a, 5).pointer(dgateUp).pointer(dout).pointer(gateUp).i64(n).i64(features));
    }

    /** out bf16 [rows, cols] packed = x's rows (stride ldX) rounded to nearest even. */
    public void f32ToBf16(MemorySegment out, MemorySegment x, long rows, long cols, long ldX, MemorySegment s) {
        elements(f32ToBf16, "d4j_f32_to_bf16", rows * cols, s, a -> new LaunchArgs(a, 5).pointer(out).pointer(x).i64(rows).i64(cols).i64(ldX));
    }

    /** y's rows [rows, cols] (stride ld) += b [cols]. */
    public void biasAddStrided(MemorySegment y, MemorySegment b, long rows, long cols, long ld, MemorySegment s) {
        elements(biasAddStrided, "d4j_bias_add_strided", rows * cols, s, a -> new LaunchArgs(a, 5).pointer(y).pointer(b).i64(rows).i64(cols).i64(ld));
    }

    /** db [cols] += column sums of dy's rows [rows, cols] (stride ld), rows in order. */
    public void biasGradStrided(MemorySegment db, MemorySegment dy, long rows, long cols, long ld, MemorySegment s) {
        elements(biasGradStrided, "d4j_bias_grad_strided", cols, s, a -> new LaunchArgs(a, 5).pointer(db).pointer(dy).i64(rows).i64(cols).i64(ld));
    }
}
