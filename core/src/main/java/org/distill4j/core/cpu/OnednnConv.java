package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.ConvGeometry;

/**
 * The CPU backend's 2-D convolution on oneDNN's convolution primitives (forward with an optional
 * bias, backward-data, backward-weights with an optional bias gradient) over our NCHW float32
 * tensors and [K, C, R, S] weights, for {@link CpuBackend}, which checks the arguments first
 * (nothing here re-checks them) and runs im2col + gemm when this returns false.
 *
 * <p>Layout: the primitives are created with format_tag_any, so oneDNN picks its own layout
 * (channel-blocked on AVX-512: nChw16c activations, OIhw16i16o-style weights), and each call
 * reorders our NCHW inputs into context buffers in that layout and the output back, as PyTorch's
 * CPU build does for NCHW tensors. Asked for plain nchw/oihw instead
 * ({@code -Ddistill4j.onednn.conv.layout=plain}), oneDNN 3.8.1 wraps an nspc kernel, a gemm or its
 * reference kernel behind internal reorders, and the reference one took the CNN benchmark's 3x3
 * convolutions (seconds per call at batch 256; bench/RESULTS.md, issue 23). Weights are reordered
 * on every call, also a frozen teacher's: they are small next to the activations here.
 *
 * <p>Padding: PyTorch's floor-mode geometry; oneDNN gets padding_r = padding_l (what PyTorch's
 * CPU build passes), which its consistency check accepts since it floors the same way.
 *
 * <p>Each problem (op, sizes, geometry, bias or not, OpenMP thread count) gets one primitive, made
 * on first use and cached ({@link OnednnCall}); a call is allocation-free once warm. Backward
 * weights accumulates (dw += ...) through a context buffer, since oneDNN overwrites its output.
 *
 * <p>{@link #forwardBf16}: the bf16 inference plan's convolution (issue 23): x and w already
 * bfloat16 (the caller rounded them, nearest even), y and the bias float32, products summed in
 * float32; the data types are fixed in the primitive (not permitted through fpmath_mode).
 */
final class OnednnConv {
    static final int FORWARD = 1, BACKWARD_DATA = 2, BACKWARD_WEIGHTS = 3, FORWARD_BF16 = 4;
    private static final int KEY_LENGTH = 18;
    private static final MemorySegment ENGINE = Onednn.engine();

    private OnednnConv() {}

    /** The implementation oneDNN chose for each cached convolution problem (for tests and reports). */
    static List<String> implementations() {
        return java.util.stream.Stream.of(FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS, FORWARD_BF16).flatMap(op -> OnednnCall.implementations(op).stream()).toList();
    }

    /**
     * Fills ctx.key with the problem: op, x [n, c, h, w], w [k, c, r, s], y [n, k, oh, ow], padding,
     * stride, bias, threads, and whether the caller's x (or dx) and y (or dy) are in nChw16c.
     */
    private static void key(OnednnCall.Context ctx, int op, ConvGeometry g, Conv2dParams p, boolean bias, int threads, boolean srcBlocked,
                            boolean dstBlocked) {
        int[] key = ctx.key;
        key[0] = op;
        key[1] = g.n();
        key[2] = g.c();
        key[3] = g.h();
        key[4] = g.w();
        key[5] = g.k();
        key[6] = g.r();
        key[7] = g.s();
        key[8] = g.oh();
        key[9] = g.ow();
        key[10] = p.padH();
        key[11] = p.padW();
        key[12] = p.strideH();
        key[13] = p.strideW();
        key[14] = bias ? 1 : 0;
        key[15] = threads;
        key[16] = srcBlocked ? 1 : 0;
        key[17] = dstBlocked ? 1 : 0;
    }

    /** y [n, k, oh, ow] = conv(x, w) (+ bias [k] when not null). False, having done nothing, when oneDNN cannot run it. */
    static boolean forward(MemorySegment x, MemorySegment w, MemorySegment bias, MemorySegment y, ConvGeometry g, Conv2dParams p) {
        return forward(FORWARD, x, w, bias, y, g, p, false, false);
    }

    /**
     * As {@link #forward(MemorySegment, MemorySegment, MemorySegment, MemorySegment, ConvGeometry, Conv2dParams)},
     * with x in nChw16c when {@code xBlocked} and y written in nChw16c when {@code yBlocked}
     * (training's blocked activations: no reorder of either).
     */
    static boolean forward(MemorySegment x, MemorySegment w, MemorySegment bias, MemorySegment y, ConvGeometry g, Conv2dParams p, boolean xBlocked,
                           boolean yBlocked) {
        return forward(FORWARD, x, w, bias, y, g, p, xBlocked, yBlocked);
    }

    /**
     * y [n, k, oh, ow] float32 = conv(x, w) (+ bias [k] float32 when not null) with x [n, c, h, w]
     * and w [k, c, r, s] bfloat16 (raw bits), products summed in float32. False, having done
     * nothing, when oneDNN has no bf16 convolution for it here.
     */
    static boolean forwardBf16(MemorySegment x, MemorySegment w, MemorySegment bias, MemorySegment y, ConvGeometry g, Conv2dParams p) {
        return forward(FORWARD_BF16, x, w, bias, y, g, p, false, false);
    }

    private static boolean forward(int op, MemorySegment x, MemorySegment w, MemorySegment bias, MemorySegment y, ConvGeometry g, Conv2dParams p,
                                   boolean xBlocked, boolean yBlocked) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, op, g, p, bias != null, threads, xBlocked, yBlocked);
            if (ctx.find(KEY_LENGTH, OnednnConv::create).primitive == null) return false;
            ctx.bind(0, x);
            ctx.bind(1, w);
            ctx.bind(2, y);
            if (bias != null) ctx.bind(3, bias);
            ctx.execute();
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /**
     * dx [n, c, h, w] = conv2d's input gradient from dy [n, k, oh, ow] and w (dx overwritten), dy in
     * nChw16c when {@code dyBlocked}, dx written in nChw16c when {@code dxBlocked}. False when oneDNN cannot run it.
     */
    static boolean backwardData(MemorySegment dy, MemorySegment w, MemorySegment dx, ConvGeometry g, Conv2dParams p, boolean dyBlocked, boolean dxBlocked) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, BACKWARD_DATA, g, p, false, threads, dxBlocked, dyBlocked);
            if (ctx.find(KEY_LENGTH, OnednnConv::create).primitive == null) return false;
            ctx.bind(0, dy);
            ctx.bind(1, w);
            ctx.bind(2, dx);
            ctx.execute();
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /**
     * dw [k, c, r, s] (+)= the weight gradient from x and dy, and dbias [k] (+)= the sum of dy over
     * n, oh, ow when dbias is not null; accumulate adds to what is there; x and dy in nChw16c when
     * {@code xBlocked} and {@code dyBlocked}. False when oneDNN cannot run it.
     */
    static boolean backwardWeights(MemorySegment x, MemorySegment dy, MemorySegment dw, MemorySegment dbias, ConvGeometry g, Conv2dParams p,
                                   boolean accumulate, boolean xBlocked, boolean dyBlocked) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, BACKWARD_WEIGHTS, g, p, dbias != null, threads, xBlocked, dyBlocked);
            if (ctx.find(KEY_LENGTH, OnednnConv::create).primitive == null) return false;
            long weights = (long) g.k() * g.crs();
            MemorySegment dwOut = accumulate ? ctx.buffer(0, weights * Float.BYTES) : dw;
            MemorySegment dbOut = dbias == null ? null : accumulate ? ctx.buffer(1, (long) g.k() * Float.BYTES) : dbias;
            ctx.bind(0, x);
            ctx.bind(1, dy);
            ctx.bind(2, dwOut);
            if (dbias != null) ctx.bind(3, dbOut);
            ctx.execute();
            if (accumulate) {
                addInto(dw, dwOut, weights);
                if (dbias != null) addInto(dbias, dbOut, g.k());
            }
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /** to[i] += from[i] for i < n. */
    private static void addInto(MemorySegment to, MemorySegment from, long n) {
        for (long i = 0; i < n; i++) to.setAtIndex(JAVA_FLOAT, i, to.getAtIndex(JAVA_FLOAT, i) + from.getAtIndex(JAVA_FLOAT, i));
    }

    /**
     * How the primitives' tensors are laid out: "any" (the default) lets oneDNN choose (its
     * channel-blocked nChw16c/OIhw16i16o on AVX-512), with reorders from and to our NCHW around each
     * call; "plain" makes it take nchw/oihw as they are (measured far slower on 3x3 convolutions:
     * oneDNN 3.8.1 has only its reference kernel or a gemm for many of them; bench/RESULTS.md).
     */
    private static final boolean ANY_LAYOUT = !"plain".equals(System.getProperty("distill4j.onednn.conv.layout", "any"));

    /** Whether the primitives run in oneDNN's own layouts (not -Ddistill4j.onednn.conv.layout=plain): then blocked activations save reorders. */
    static boolean anyLayout() {
        return ANY_LAYOUT;
    }

    /** The primitive of a problem (see {@link #key}); left declined when oneDNN has no implementation. */
    private static OnednnCall.Primitive create(int[] key, boolean cached) {
        OnednnCall.Primitive prim = new OnednnCall.Primitive(key, cached);
        int op = key[0], n = key[1], c = key[2], h = key[3], w = key[4], k = key[5], r = key[6], s = key[7], oh = key[8], ow = key[9];
        boolean bias = key[14] == 1;
        // bf16 forward: x and w bf16, y and bias float32.
        int ab = op == FORWARD_BF16 ? dnnl_h.dnnl_bf16 : dnnl_h.dnnl_f32;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            // Ours (what the caller's segments hold: NCHW, or nChw16c where the key says so) and what the primitive is asked
            // for (the same, or any).
            boolean srcBlocked = key[16] == 1, dstBlocked = key[17] == 1;
            MemorySegment src = prim.descOfType(arena, ab, srcBlocked ? dnnl_h.dnnl_nChw16c : dnnl_h.dnnl_nchw, n, c, h, w);
            MemorySegment weights = prim.descOfType(arena, ab, dnnl_h.dnnl_oihw, k, c, r, s);
            MemorySegment dst = prim.desc(arena, dstBlocked ? dnnl_h.dnnl_nChw16c : dnnl_h.dnnl_nchw, n, k, oh, ow);
            MemorySegment srcAny = src, weightsAny = weights, dstAny = dst;
            if (ANY_LAYOUT) {
                // With both channel counts multiples of 16 the activations are asked for as nChw16c, not "any": given "any",
                // oneDNN 3.8.1 picks brgconv_strided with another layout for the backward-data of stride-2 convolutions, 3-5x
                // slower here than its nChw16c kernel (the CNN student's 16 -> 32 stride-2 convolutions: 8.7-11.9 ms against
                // 2.8; bench/RESULTS.md, fifteenth session), plus slower reorders into that layout. A side the caller holds in
                // nChw16c is asked for as such too (the first convolution's output, 3 -> 16 channels).
                boolean both = c % 16 == 0 && k % 16 == 0;
                srcAny = srcBlocked ? src : prim.descOfType(arena, ab, both ? dnnl_h.dnnl_nChw16c : dnnl_h.dnnl_format_tag_any, n, c, h, w);
                weightsAny = prim.descOfType(arena, ab, dnnl_h.dnnl_format_tag_any, k, c, r, s);
                dstAny = dstBlocked ? dst : prim.desc(arena, both ? dnnl_h.dnnl_nChw16c : dnnl_h.dnnl_format_tag_any, n, k, oh, ow);
            }
            MemorySegment biasMd = bias ? prim.desc(arena, dnnl_h.dnnl_a, k) : MemorySegment.NULL;
            MemorySegment strides = arena.allocateFrom(JAVA_LONG, key[12], key[13]);
            MemorySegment dilates = arena.allocateFrom(JAVA_LONG, 0, 0); // oneDNN counts dilation from 0: none
            MemorySegment padding = arena.allocateFrom(JAVA_LONG, key[10], key[11]);
            int status;
            MemorySegment hint = MemorySegment.NULL;
            if (op != FORWARD && op != FORWARD_BF16) {
                // The backward primitives take the forward's descriptor as a hint (the same implementation family and layouts).
                status = dnnl_h.dnnl_convolution_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training, dnnl_h.dnnl_convolution_direct,
                    srcAny, weightsAny, biasMd, dstAny, strides, dilates, padding, padding, MemorySegment.NULL);
                hint = prim.hint(status, out, "dnnl_convolution_forward_primitive_desc_create");
                if (hint == null) return prim;
            }
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            try {
                status = switch (op) {
                    case FORWARD -> dnnl_h.dnnl_convolution_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training,
                        dnnl_h.dnnl_convolution_direct, srcAny, weightsAny, biasMd, dstAny, strides, dilates, padding, padding, attr);
                    case FORWARD_BF16 -> dnnl_h.dnnl_convolution_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_inference,
                        dnnl_h.dnnl_convolution_direct, srcAny, weightsAny, biasMd, dstAny, strides, dilates, padding, padding, attr);
                    case BACKWARD_DATA -> dnnl_h.dnnl_convolution_backward_data_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_convolution_direct,
                        srcAny, weightsAny, dstAny, strides, dilates, padding, padding, hint, attr);
                    case BACKWARD_WEIGHTS -> dnnl_h.dnnl_convolution_backward_weights_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_convolution_direct,
                        srcAny, weightsAny, biasMd, dstAny, strides, dilates, padding, padding, hint, attr);
                    default -> throw new IllegalStateException("OnednnConv: unknown op " + op);
                };
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            if (status == dnnl_h.dnnl_unimplemented) return prim;
            DnnlException.check(status, "dnnl_convolution primitive_desc_create for " + java.util.Arrays.toString(key));
            MemorySegment pd = out.get(ADDRESS, 0);
            prim.descriptor(pd, out);
            switch (op) {
                case FORWARD, FORWARD_BF16 -> {
                    if (bias) prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_WEIGHTS, dnnl_h.DNNL_ARG_DST, dnnl_h.DNNL_ARG_BIAS},
                        src, weights, dst, biasMd);
                    else prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_WEIGHTS, dnnl_h.DNNL_ARG_DST}, src, weights, dst);
                    prim.layout(0, query(pd, dnnl_h.dnnl_query_src_md), false, out);
                    prim.layout(1, query(pd, dnnl_h.dnnl_query_weights_md), false, out);
                    prim.layout(2, query(pd, dnnl_h.dnnl_query_dst_md), true, out);
                }
                case BACKWARD_DATA -> {
                    prim.arguments(new int[] {dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_WEIGHTS, dnnl_h.DNNL_ARG_DIFF_SRC}, dst, weights, src);
                    prim.layout(0, query(pd, dnnl_h.dnnl_query_diff_dst_md), false, out);
                    prim.layout(1, query(pd, dnnl_h.dnnl_query_weights_md), false, out);
                    prim.layout(2, query(pd, dnnl_h.dnnl_query_diff_src_md), true, out);
                }
                default -> {
                    if (bias) prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_DIFF_WEIGHTS, dnnl_h.DNNL_ARG_DIFF_BIAS},
                        src, dst, weights, biasMd);
                    else prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_DIFF_WEIGHTS}, src, dst, weights);
                    prim.layout(0, query(pd, dnnl_h.dnnl_query_src_md), false, out);
                    prim.layout(1, query(pd, dnnl_h.dnnl_query_diff_dst_md), false, out);
                    prim.layout(2, query(pd, dnnl_h.dnnl_query_diff_weights_md), true, out);
                }
            }
            prim.create(out);
            return prim;
        } catch (RuntimeException ex) {
            prim.destroy();
            throw ex;
        }
    }

    /** The memory descriptor the primitive descriptor chose for an argument (owned by pd). */
    private static MemorySegment query(MemorySegment pd, int what) {
        return dnnl_h.dnnl_primitive_desc_query_md(pd, what, 0);
    }
}
