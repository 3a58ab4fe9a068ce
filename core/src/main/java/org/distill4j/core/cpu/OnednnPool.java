package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.stream.Stream;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.core.Pool2dParams;
import org.distill4j.core.PoolMode;

/**
 * The CPU backend's max and average pooling on oneDNN's pooling primitives over NCHW float32, for
 * {@link CpuBackend}, which checks the arguments first and runs its own loops when this returns
 * false. Semantics as {@link Pool2dParams}: floor mode, max pooling ignores the padding, average
 * pooling divides by the whole window (dnnl_pooling_avg_include_padding); padding_r = padding_l,
 * which oneDNN's floor-mode consistency check accepts.
 *
 * <p>Max pooling's backward needs the forward's workspace (which element of each window was the
 * maximum); our backward API has x and y but no workspace, so the backward runs the forward
 * (training mode) again into a context buffer for the workspace, then the backward primitive.
 * oneDNN records the first maximum of a window in row-major order (a strictly greater value
 * replaces it), the element our own backward routes the gradient to, so ties agree
 * (OnednnPoolTest). NaN: our forward propagates a NaN of the window and routes its gradient to
 * it; oneDNN's max does not promise either, so a NaN input may pool differently (documented,
 * not tested).
 */
final class OnednnPool {
    static final int FORWARD_MAX = 11, FORWARD_AVG = 12, BACKWARD_MAX = 13, BACKWARD_AVG = 14, FORWARD_MAX_TRAINING = 15;
    private static final int KEY_LENGTH = 14;
    private static final MemorySegment ENGINE = Onednn.engine();

    private OnednnPool() {}

    /** The implementation oneDNN chose for each cached pooling problem. */
    static List<String> implementations() {
        return Stream.of(FORWARD_MAX, FORWARD_AVG, BACKWARD_MAX, BACKWARD_AVG, FORWARD_MAX_TRAINING).flatMap(op -> OnednnCall.implementations(op).stream())
            .toList();
    }

    private static void key(OnednnCall.Context ctx, int op, Pool2dParams p, long n, long c, long h, long w, long oh, long ow, int threads) {
        int[] key = ctx.key;
        key[0] = op;
        key[1] = (int) n;
        key[2] = (int) c;
        key[3] = (int) h;
        key[4] = (int) w;
        key[5] = (int) oh;
        key[6] = (int) ow;
        key[7] = p.kernelH();
        key[8] = p.kernelW();
        key[9] = p.strideH();
        key[10] = p.strideW();
        key[11] = p.padH();
        key[12] = p.padW();
        key[13] = threads;
    }

    /** y [n, c, oh, ow] = pool(x [n, c, h, w]). False, having done nothing, when oneDNN cannot run it. Sizes must fit an int (checked by the caller). */
    static boolean forward(PoolMode mode, Pool2dParams p, MemorySegment x, MemorySegment y, long n, long c, long h, long w, long oh, long ow) {
        if ((n | c | h | w) > Integer.MAX_VALUE) return false; // oneDNN's dims are ours as int in the key
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, mode == PoolMode.MAX ? FORWARD_MAX : FORWARD_AVG, p, n, c, h, w, oh, ow, threads);
            if (ctx.find(KEY_LENGTH, OnednnPool::create).primitive == null) return false;
            ctx.bind(0, x);
            ctx.bind(1, y);
            ctx.execute();
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /** dx [n, c, h, w] = the pooling's input gradient from dy [n, c, oh, ow] (and x for max pooling); dx overwritten. False when oneDNN cannot run it. */
    static boolean backward(PoolMode mode, Pool2dParams p, MemorySegment x, MemorySegment dy, MemorySegment dx, long n, long c, long h, long w,
                            long oh, long ow) {
        if ((n | c | h | w) > Integer.MAX_VALUE) return false; // oneDNN's dims are ours as int in the key
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            if (mode == PoolMode.MAX) {
                // The forward again, in training mode, for the workspace (argmax per window): into context buffers.
                key(ctx, FORWARD_MAX_TRAINING, p, n, c, h, w, oh, ow, threads);
                OnednnCall.Primitive fwd = ctx.find(KEY_LENGTH, OnednnPool::create);
                if (fwd.primitive == null) return false;
                MemorySegment y = ctx.buffer(0, n * c * oh * ow * Float.BYTES), workspace = ctx.buffer(1, fwd.extraBytes);
                ctx.bind(0, x);
                ctx.bind(1, y);
                ctx.bind(2, workspace);
                ctx.execute();
                key(ctx, BACKWARD_MAX, p, n, c, h, w, oh, ow, threads);
                if (ctx.find(KEY_LENGTH, OnednnPool::create).primitive == null) return false;
                ctx.bind(0, dy);
                ctx.bind(1, workspace);
                ctx.bind(2, dx);
                ctx.execute();
                return true;
            }
            key(ctx, BACKWARD_AVG, p, n, c, h, w, oh, ow, threads);
            if (ctx.find(KEY_LENGTH, OnednnPool::create).primitive == null) return false;
            ctx.bind(0, dy);
            ctx.bind(1, dx);
            ctx.execute();
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    private static OnednnCall.Primitive create(int[] key, boolean cached) {
        OnednnCall.Primitive prim = new OnednnCall.Primitive(key, cached);
        int op = key[0];
        boolean max = op == FORWARD_MAX || op == BACKWARD_MAX || op == FORWARD_MAX_TRAINING;
        int alg = max ? dnnl_h.dnnl_pooling_max : dnnl_h.dnnl_pooling_avg_include_padding;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            MemorySegment src = prim.desc(arena, dnnl_h.dnnl_nchw, key[1], key[2], key[3], key[4]);
            MemorySegment dst = prim.desc(arena, dnnl_h.dnnl_nchw, key[1], key[2], key[5], key[6]);
            MemorySegment strides = arena.allocateFrom(JAVA_LONG, key[9], key[10]);
            MemorySegment kernel = arena.allocateFrom(JAVA_LONG, key[7], key[8]);
            MemorySegment dilation = arena.allocateFrom(JAVA_LONG, 0, 0);
            MemorySegment padding = arena.allocateFrom(JAVA_LONG, key[11], key[12]);
            boolean forward = op == FORWARD_MAX || op == FORWARD_AVG || op == FORWARD_MAX_TRAINING;
            MemorySegment hint = MemorySegment.NULL;
            int status;
            if (!forward) {
                status = dnnl_h.dnnl_pooling_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training, alg, src, dst, strides, kernel, dilation,
                    padding, padding, MemorySegment.NULL);
                hint = prim.hint(status, out, "dnnl_pooling_forward_primitive_desc_create");
                if (hint == null) return prim;
            }
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            try {
                status = forward
                    ? dnnl_h.dnnl_pooling_forward_primitive_desc_create(out, ENGINE, op == FORWARD_MAX_TRAINING ? dnnl_h.dnnl_forward_training
                        : dnnl_h.dnnl_forward_inference, alg, src, dst, strides, kernel, dilation, padding, padding, attr)
                    : dnnl_h.dnnl_pooling_backward_primitive_desc_create(out, ENGINE, alg, src, dst, strides, kernel, dilation, padding, padding, hint, attr);
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            if (status == dnnl_h.dnnl_unimplemented) return prim;
            DnnlException.check(status, "dnnl_pooling primitive_desc_create for " + java.util.Arrays.toString(key));
            MemorySegment pd = out.get(ADDRESS, 0);
            prim.descriptor(pd, out);
            if (op == FORWARD_MAX_TRAINING || op == BACKWARD_MAX) {
                // The workspace's descriptor belongs to the primitive descriptor (queried, not ours to destroy).
                MemorySegment ws = dnnl_h.dnnl_primitive_desc_query_md(op == BACKWARD_MAX ? hint : pd, dnnl_h.dnnl_query_workspace_md, 0);
                prim.extraBytes = dnnl_h.dnnl_memory_desc_get_size(ws);
                if (op == FORWARD_MAX_TRAINING) {
                    prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DST, dnnl_h.DNNL_ARG_WORKSPACE}, src, dst, ws);
                } else {
                    prim.arguments(new int[] {dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_WORKSPACE, dnnl_h.DNNL_ARG_DIFF_SRC}, dst, ws, src);
                }
            } else if (forward) {
                prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DST}, src, dst);
            } else {
                prim.arguments(new int[] {dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_DIFF_SRC}, dst, src);
            }
            prim.create(out);
            return prim;
        } catch (RuntimeException ex) {
            prim.destroy();
            throw ex;
        }
    }
}
