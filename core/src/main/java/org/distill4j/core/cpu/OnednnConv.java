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
 * <p>Layout: the primitives take the plain nchw/oihw descriptors, so nothing is reordered on our
 * side; oneDNN 3.8 runs them with its nspc kernels behind internal reorders
 * ("jit:...ncsp..." implementations) or its gemm convolution, whichever it has for the shape.
 * Measured against format_tag_any with reorders of our own in bench/RESULTS.md (issue 23).
 *
 * <p>Padding: PyTorch's floor-mode geometry; oneDNN gets padding_r = padding_l (what PyTorch's
 * CPU build passes), which its consistency check accepts since it floors the same way.
 *
 * <p>Each problem (op, sizes, geometry, bias or not, OpenMP thread count) gets one primitive, made
 * on first use and cached ({@link OnednnCall}); a call is allocation-free once warm. Backward
 * weights accumulates (dw += ...) through a context buffer, since oneDNN overwrites its output.
 */
final class OnednnConv {
    static final int FORWARD = 1, BACKWARD_DATA = 2, BACKWARD_WEIGHTS = 3;
    private static final int KEY_LENGTH = 16;
    private static final MemorySegment ENGINE = Onednn.engine();

    private OnednnConv() {}

    /** The implementation oneDNN chose for each cached convolution problem (for tests and reports). */
    static List<String> implementations() {
        return java.util.stream.Stream.of(FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS).flatMap(op -> OnednnCall.implementations(op).stream()).toList();
    }

    /** Fills ctx.key with the problem: op, x [n, c, h, w], w [k, c, r, s], y [n, k, oh, ow], padding, stride, bias, threads. */
    private static void key(OnednnCall.Context ctx, int op, ConvGeometry g, Conv2dParams p, boolean bias, int threads) {
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
    }

    /** y [n, k, oh, ow] = conv(x, w) (+ bias [k] when not null). False, having done nothing, when oneDNN cannot run it. */
    static boolean forward(MemorySegment x, MemorySegment w, MemorySegment bias, MemorySegment y, ConvGeometry g, Conv2dParams p) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, FORWARD, g, p, bias != null, threads);
            if (ctx.find(KEY_LENGTH, OnednnConv::create).primitive == null) return false;
            ctx.bind(0, x);
            ctx.bind(1, w);
            if (bias != null) {
                ctx.bind(2, bias);
                ctx.bind(3, y);
            } else {
                ctx.bind(2, y);
            }
            ctx.execute();
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /** dx [n, c, h, w] = conv2d's input gradient from dy [n, k, oh, ow] and w (dx overwritten). False when oneDNN cannot run it. */
    static boolean backwardData(MemorySegment dy, MemorySegment w, MemorySegment dx, ConvGeometry g, Conv2dParams p) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, BACKWARD_DATA, g, p, false, threads);
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
     * n, oh, ow when dbias is not null; accumulate adds to what is there. False when oneDNN cannot run it.
     */
    static boolean backwardWeights(MemorySegment x, MemorySegment dy, MemorySegment dw, MemorySegment dbias, ConvGeometry g, Conv2dParams p,
                                   boolean accumulate) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, BACKWARD_WEIGHTS, g, p, dbias != null, threads);
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

    /** The primitive of a problem (see {@link #key}); left declined when oneDNN has no implementation. */
    private static OnednnCall.Primitive create(int[] key, boolean cached) {
        OnednnCall.Primitive prim = new OnednnCall.Primitive(key, cached);
        int op = key[0], n = key[1], c = key[2], h = key[3], w = key[4], k = key[5], r = key[6], s = key[7], oh = key[8], ow = key[9];
        boolean bias = key[14] == 1;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            MemorySegment src = OnednnCall.plain(arena, dnnl_h.dnnl_nchw, n, c, h, w);
            prim.ownedDescs.add(src);
            MemorySegment weights = OnednnCall.plain(arena, dnnl_h.dnnl_oihw, k, c, r, s);
            prim.ownedDescs.add(weights);
            MemorySegment dst = OnednnCall.plain(arena, dnnl_h.dnnl_nchw, n, k, oh, ow);
            prim.ownedDescs.add(dst);
            MemorySegment biasMd = MemorySegment.NULL;
            if (bias) {
                biasMd = OnednnCall.plain(arena, dnnl_h.dnnl_a, k);
                prim.ownedDescs.add(biasMd);
            }
            MemorySegment strides = arena.allocateFrom(JAVA_LONG, key[12], key[13]);
            MemorySegment dilates = arena.allocateFrom(JAVA_LONG, 0, 0); // oneDNN counts dilation from 0: none
            MemorySegment padding = arena.allocateFrom(JAVA_LONG, key[10], key[11]);
            int status;
            MemorySegment hint = MemorySegment.NULL;
            if (op != FORWARD) {
                // The backward primitives take the forward's descriptor as a hint (the same implementation family).
                status = dnnl_h.dnnl_convolution_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training, dnnl_h.dnnl_convolution_direct,
                    src, weights, biasMd, dst, strides, dilates, padding, padding, MemorySegment.NULL);
                if (status == dnnl_h.dnnl_unimplemented) {
                    prim.implementation = "declined: no forward for the backward's hint";
                    return prim;
                }
                DnnlException.check(status, "dnnl_convolution_forward_primitive_desc_create (hint) for " + java.util.Arrays.toString(key));
                hint = out.get(ADDRESS, 0);
                prim.ownedPrimitiveDescs.add(hint);
            }
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            try {
                status = switch (op) {
                    case FORWARD -> dnnl_h.dnnl_convolution_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training,
                        dnnl_h.dnnl_convolution_direct, src, weights, biasMd, dst, strides, dilates, padding, padding, attr);
                    case BACKWARD_DATA -> dnnl_h.dnnl_convolution_backward_data_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_convolution_direct,
                        src, weights, dst, strides, dilates, padding, padding, hint, attr);
                    case BACKWARD_WEIGHTS -> dnnl_h.dnnl_convolution_backward_weights_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_convolution_direct,
                        src, weights, biasMd, dst, strides, dilates, padding, padding, hint, attr);
                    default -> throw new IllegalStateException("OnednnConv: unknown op " + op);
                };
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            if (status == dnnl_h.dnnl_unimplemented) return prim;
            DnnlException.check(status, "dnnl_convolution primitive_desc_create for " + java.util.Arrays.toString(key));
            MemorySegment pd = out.get(ADDRESS, 0);
            switch (op) {
                case FORWARD -> {
                    if (bias) prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_WEIGHTS, dnnl_h.DNNL_ARG_BIAS, dnnl_h.DNNL_ARG_DST},
                        src, weights, biasMd, dst);
                    else prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_WEIGHTS, dnnl_h.DNNL_ARG_DST}, src, weights, dst);
                }
                case BACKWARD_DATA -> prim.arguments(new int[] {dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_WEIGHTS, dnnl_h.DNNL_ARG_DIFF_SRC}, dst, weights, src);
                default -> {
                    if (bias) prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_DIFF_WEIGHTS, dnnl_h.DNNL_ARG_DIFF_BIAS},
                        src, dst, weights, biasMd);
                    else prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_DIFF_WEIGHTS}, src, dst, weights);
                }
            }
            prim.create(pd, out);
            return prim;
        } catch (RuntimeException ex) {
            prim.destroy();
            throw ex;
        }
    }
}
