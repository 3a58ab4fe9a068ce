package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.stream.Stream;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;

/**
 * The CPU backend's training batch normalization (forward and backward) on oneDNN's
 * batch-normalization primitives over our [N, C, inner] float32 tensors (inner = H W), for
 * {@link CpuBackend}, which checks the arguments first (nothing here re-checks them), routes only
 * the shapes where this measured faster than its own loops, and runs those loops when this returns
 * false. The contract is {@link CpuBackend#batchNormTrain}'s:
 * <ul>
 *   <li>forward: y = (x - mean) invStd gamma + beta with the batch's mean and biased variance
 *       over N and inner; saveMean = mean, saveInvStd = 1 / sqrt(var + eps); running statistics
 *       updated PyTorch's way, running = (1 - momentum) running + momentum batch, the variance
 *       with the unbiased correction count / (count - 1). oneDNN computes mean, variance
 *       (E[(x - mean)^2]) and y in float32, where our loops sum in double; the C-element tail
 *       (invStd, running statistics) is ours, in double, from its float variance;</li>
 *   <li>backward: dx, dgamma, dbeta (overwritten) from x, dy, gamma and the saved statistics,
 *       the batch statistics treated as functions of x. oneDNN takes the variance and eps, not the
 *       inverse standard deviation, and our API passes no eps: its primitive gets eps 0 and the
 *       variance 1 / invStd^2, from which it recomputes invStd to within an ulp of the saved one.</li>
 * </ul>
 *
 * <p>Layout: the primitives run on oneDNN's channel-blocked nChw16c, with x (and dy) reordered
 * into context buffers and y (dx) back, as {@link OnednnConv} does: given our plain nchw as it
 * is, oneDNN 3.8.1 takes its ncsp_bnorm kernel, which lost to our loops on every CNN benchmark
 * shape (as did nhwc); the blocked jit kernel wins where H W is small (docs/backends.md). The
 * tensor is described to oneDNN as [N, C, inner, 1], since only H W matters to batch norm.
 * C need not be a multiple of 16 (oneDNN pads the last block), though CpuBackend routes only
 * those that are.
 *
 * <p>Each problem (op, n, c, inner, eps, OpenMP thread count) gets one primitive, made on first
 * use and cached ({@link OnednnCall}); a call allocates nothing once warm.
 */
final class OnednnBatchNorm {
    static final int FORWARD_TRAINING = 21, BACKWARD = 23;
    private static final int KEY_LENGTH = 9;
    private static final MemorySegment ENGINE = Onednn.engine();

    private OnednnBatchNorm() {}

    /** The implementation oneDNN chose for each cached batch-norm problem (for tests and reports). */
    static List<String> implementations() {
        return Stream.of(FORWARD_TRAINING, BACKWARD).flatMap(op -> OnednnCall.implementations(op).stream()).toList();
    }

    /** op, sizes, eps, threads, and whether the caller's x, dy and y (or dx) are in nChw16c (blocked activations: no reorder). */
    private static void key(OnednnCall.Context ctx, int op, long n, long c, long inner, float eps, int threads, boolean xBlocked, boolean dyBlocked,
                            boolean outBlocked) {
        int[] key = ctx.key;
        key[0] = op;
        key[1] = (int) n;
        key[2] = (int) c;
        key[3] = (int) inner;
        key[4] = Float.floatToRawIntBits(eps);
        key[5] = threads;
        key[6] = xBlocked ? 1 : 0;
        key[7] = dyBlocked ? 1 : 0;
        key[8] = outBlocked ? 1 : 0;
    }

    /**
     * Training forward of x [n, c, inner] into y, saveMean and saveInvStd [c], updating runningMean
     * and runningVar [c] (see the class comment); x in nChw16c when {@code xBlocked}, y written in
     * nChw16c when {@code yBlocked}. False, having done nothing, when oneDNN cannot run it.
     */
    static boolean forwardTraining(MemorySegment x, MemorySegment gamma, MemorySegment beta, MemorySegment runningMean, MemorySegment runningVar,
                                   float momentum, float eps, MemorySegment y, MemorySegment saveMean, MemorySegment saveInvStd, long n, long c, long inner,
                                   boolean xBlocked, boolean yBlocked) {
        if ((n | c | inner) > Integer.MAX_VALUE) return false; // the key holds the sizes as int
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            key(ctx, FORWARD_TRAINING, n, c, inner, eps, threads, xBlocked, false, yBlocked);
            if (ctx.find(KEY_LENGTH, OnednnBatchNorm::create).primitive == null) return false;
            MemorySegment variance = ctx.buffer(0, c * Float.BYTES); // oneDNN's biased variance, float32 [c]
            ctx.bind(0, x);
            ctx.bind(1, gamma);
            ctx.bind(2, beta);
            ctx.bind(3, y);
            ctx.bind(4, saveMean);
            ctx.bind(5, variance);
            ctx.execute();
            double count = (double) n * inner;
            for (long ch = 0; ch < c; ch++) {
                double mean = saveMean.getAtIndex(JAVA_FLOAT, ch), var = variance.getAtIndex(JAVA_FLOAT, ch);
                saveInvStd.setAtIndex(JAVA_FLOAT, ch, (float) (1 / Math.sqrt(var + eps)));
                runningMean.setAtIndex(JAVA_FLOAT, ch, (float) ((1 - momentum) * runningMean.getAtIndex(JAVA_FLOAT, ch) + momentum * mean));
                runningVar.setAtIndex(JAVA_FLOAT, ch, (float) ((1 - momentum) * runningVar.getAtIndex(JAVA_FLOAT, ch) + momentum * var * count / (count - 1)));
            }
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /**
     * Backward: dx [n, c, inner], dgamma and dbeta [c] (all overwritten) from x, dy, gamma and the
     * training forward's saveMean and saveInvStd; x and dy in nChw16c when {@code xBlocked} and
     * {@code dyBlocked}, dx written in nChw16c when {@code dxBlocked}. False, having done nothing, when oneDNN cannot run it.
     */
    static boolean backward(MemorySegment x, MemorySegment dy, MemorySegment gamma, MemorySegment saveMean, MemorySegment saveInvStd,
                            MemorySegment dx, MemorySegment dgamma, MemorySegment dbeta, long n, long c, long inner, boolean xBlocked, boolean dyBlocked,
                            boolean dxBlocked) {
        if ((n | c | inner) > Integer.MAX_VALUE) return false;
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            // Our backward API has no eps: the primitive gets eps 0 and the variance 1 / invStd^2, so that the
            // 1 / sqrt(variance + eps) it recomputes is saveInvStd again (to within an ulp: float32 throughout).
            key(ctx, BACKWARD, n, c, inner, 0f, threads, xBlocked, dyBlocked, dxBlocked);
            if (ctx.find(KEY_LENGTH, OnednnBatchNorm::create).primitive == null) return false;
            MemorySegment variance = ctx.buffer(0, c * Float.BYTES);
            for (long ch = 0; ch < c; ch++) {
                double invStd = saveInvStd.getAtIndex(JAVA_FLOAT, ch);
                variance.setAtIndex(JAVA_FLOAT, ch, (float) (1 / (invStd * invStd)));
            }
            ctx.bind(0, x);
            ctx.bind(1, dy);
            ctx.bind(2, gamma);
            ctx.bind(3, saveMean);
            ctx.bind(4, variance);
            ctx.bind(5, dx);
            ctx.bind(6, dgamma);
            ctx.bind(7, dbeta);
            ctx.execute();
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /** The primitive of a problem (see {@link #key}); left declined when oneDNN has no implementation. */
    private static OnednnCall.Primitive create(int[] key, boolean cached) {
        OnednnCall.Primitive prim = new OnednnCall.Primitive(key, cached);
        int op = key[0];
        long n = key[1], c = key[2], inner = key[3];
        float eps = Float.intBitsToFloat(key[4]);
        int flags = dnnl_h.dnnl_use_scale | dnnl_h.dnnl_use_shift;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            MemorySegment plain = prim.desc(arena, dnnl_h.dnnl_nchw, n, c, inner, 1); // x, y, dy, dx: ours, unless blocked
            MemorySegment inside = prim.desc(arena, dnnl_h.dnnl_nChw16c, n, c, inner, 1); // the primitive's (in context buffers where ours are plain)
            // [N, C, H W, 1] in nChw16c is [N, C, H, W] in nChw16c, byte for byte: the caller's blocked tensors are taken as they are.
            MemorySegment xMd = key[6] == 1 ? inside : plain, dyMd = key[7] == 1 ? inside : plain, outMd = key[8] == 1 ? inside : plain;
            MemorySegment channel = prim.desc(arena, dnnl_h.dnnl_a, c); // gamma, beta, mean, variance and their gradients
            int status;
            MemorySegment hint = MemorySegment.NULL;
            if (op == BACKWARD) {
                // The backward takes the training forward's descriptor as a hint.
                status = dnnl_h.dnnl_batch_normalization_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training, inside, inside, eps, flags,
                    MemorySegment.NULL);
                hint = prim.hint(status, out, "dnnl_batch_normalization_forward_primitive_desc_create");
                if (hint == null) return prim;
            }
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            try {
                status = switch (op) {
                    case FORWARD_TRAINING -> dnnl_h.dnnl_batch_normalization_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training,
                        inside, inside, eps, flags, attr);
                    case BACKWARD -> dnnl_h.dnnl_batch_normalization_backward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_backward, inside, inside,
                        inside, eps, flags, hint, attr);
                    default -> throw new IllegalStateException("OnednnBatchNorm: unknown op " + op);
                };
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            if (status == dnnl_h.dnnl_unimplemented) return prim;
            DnnlException.check(status, "dnnl_batch_normalization primitive_desc_create for " + java.util.Arrays.toString(key));
            MemorySegment pd = out.get(ADDRESS, 0);
            prim.descriptor(pd, out);
            switch (op) {
                case FORWARD_TRAINING -> {
                    // Mean and variance are outputs (training: the batch's statistics).
                    prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_SCALE, dnnl_h.DNNL_ARG_SHIFT, dnnl_h.DNNL_ARG_DST, dnnl_h.DNNL_ARG_MEAN,
                        dnnl_h.DNNL_ARG_VARIANCE}, xMd, channel, channel, outMd, channel, channel);
                    prim.layout(0, inside, false, out);
                    prim.layout(3, inside, true, out);
                }
                default -> {
                    prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_SCALE, dnnl_h.DNNL_ARG_MEAN,
                        dnnl_h.DNNL_ARG_VARIANCE, dnnl_h.DNNL_ARG_DIFF_SRC, dnnl_h.DNNL_ARG_DIFF_SCALE, dnnl_h.DNNL_ARG_DIFF_SHIFT}, xMd, dyMd, channel,
                        channel, channel, outMd, channel, channel);
                    prim.layout(0, inside, false, out);
                    prim.layout(1, inside, false, out);
                    prim.layout(5, inside, true, out);
                }
            }
            prim.create(out);
            return prim;
        } catch (RuntimeException ex) {
            prim.destroy();
            throw ex;
        }
    }
}
