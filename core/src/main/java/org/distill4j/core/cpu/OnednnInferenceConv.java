package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.core.Conv2dParams;

/**
 * A convolution with constant weights for the inference plan on the oneDNN engine (a frozen
 * teacher, the Predictor; issue 23): y = relu?(conv(x, W) + b (+ addend)), one oneDNN primitive
 * per call, with
 * <ul>
 *   <li>the weights reordered once into the layout the primitive chose (kept for the plan's life,
 *       one copy per distinct layout; {@link OnednnConv} reorders them on every call);</li>
 *   <li>the bias and the residual addend (a binary-add post-op) and ReLU (an eltwise post-op) done
 *       by the convolution's kernel while the output is in registers, instead of separate passes;</li>
 *   <li>activations that stay in oneDNN's channel-blocked layout between layers: a {@code blocked}
 *       tensor is nChw16c ([N, C/16, H, W, 16], C a multiple of 16, the same bytes as NCHW), what
 *       the AVX-512 direct convolution reads and writes, so no reorder runs between two blocked
 *       layers ({@link #toPlain} converts one back to NCHW where a layer needs it).</li>
 * </ul>
 * The caller folds an eval-mode batch norm into W and b (its scale per output channel into the
 * weights, its shift into the bias), so the result equals conv, batch norm, (add,) ReLU within
 * float32 rounding, not bit for bit. ReLU is oneDNN's: max(v, 0) with NaN kept (PyTorch's).
 *
 * <p><b>bf16</b> (a frozen teacher or Predictor asked to compute in bf16; the recipe of
 * {@link org.distill4j.core.nn.InferencePlan}'s bf16 plan): x and W rounded to bfloat16 (nearest
 * even; W once, x by {@link #toBf16} before each call), products summed in float32, y float32.
 * The batch norm is not folded into the rounded weights (that would round other weights than the
 * model's): it runs as per-channel multiply and add post-ops on the float32 sums, (conv + b) *
 * scale + shift, before the residual add and the ReLU.
 *
 * <p>Each problem (rows, the sizes, geometry, layouts, post-ops, OpenMP thread count) gets one
 * primitive, made on first use and cached process-wide ({@link OnednnCall}); a warm call allocates
 * nothing. A call that finds all of {@link OnednnCall}'s contexts busy waits for one.
 */
public final class OnednnInferenceConv implements AutoCloseable {
    private static final int FUSED = 31, REORDER = 32, KEY_LENGTH = 21;
    private static final MemorySegment ENGINE = Onednn.engine();

    /**
     * Whether inference plans fuse convolutions here: the oneDNN engine runs convolutions, unless
     * -Ddistill4j.onednn.fuse=false (read when a plan is compiled, so a test can compile both).
     */
    public static boolean enabled() {
        return !"false".equals(System.getProperty("distill4j.onednn.fuse")) && CpuBackend.onednnConvolutions();
    }

    /** Whether a tensor of {@code channels} channels can be kept channel-blocked (nChw16c without padding). */
    public static boolean blockable(long channels) {
        return channels % 16 == 0;
    }

    private final int c, h, w, k, r, s, oh, ow;
    private final Conv2dParams params;
    private final boolean srcBlocked, dstBlocked, addend, relu, bf16;
    private final Arena arena = Arena.ofShared();
    private final MemorySegment weights, bias; // W [K, C, R, S] (float32, or bf16 rounded once) and b [K] float32, our copies
    private final MemorySegment scale, shift; // bf16 only: a batch norm's per-channel y * scale + shift (float32 [K]), or null
    /** The weights in each layout a primitive asked for: parallel arrays, replaced whole under the lock (read without it). */
    private volatile OnednnCall.Primitive[] packedFor = new OnednnCall.Primitive[0];
    private volatile MemorySegment[] packed = new MemorySegment[0];

    /**
     * A fused convolution of x [rows, c, h, w] (nChw16c when {@code srcBlocked}) into y [rows, k,
     * oh, ow] (nChw16c when {@code dstBlocked}), weights W [k, c, r, s] and bias b [k] copied
     * (float32; in float32 a batch norm is already folded into them); {@code addend} adds a tensor
     * of y's shape and layout before the ReLU (the residual's shortcut; only with
     * {@code dstBlocked}). With {@code bf16} the bf16 recipe (x, given to {@link #run} as bfloat16,
     * and W rounded to bfloat16, float32 sums and output), and {@code scale}/{@code shift} (float32
     * [k], both or neither) a batch norm applied to conv + b as post-ops (bf16 only). Null when
     * oneDNN has no such convolution for {@code maxRows} rows: the caller compiles the unfused steps.
     */
    public static OnednnInferenceConv create(int c, int h, int w, int k, int r, int s, int oh, int ow, Conv2dParams p, MemorySegment weights,
                                             MemorySegment bias, MemorySegment scale, MemorySegment shift, boolean bf16, boolean srcBlocked,
                                             boolean dstBlocked, boolean addend, boolean relu, int maxRows) {
        if ((srcBlocked && !blockable(c)) || (dstBlocked && !blockable(k)) || (addend && !dstBlocked)) {
            throw new IllegalArgumentException("fused convolution: blocked needs channels divisible by 16 (c " + c + ", k " + k + "), an addend a blocked output");
        }
        if ((scale == null) != (shift == null) || (scale != null && !bf16)) {
            throw new IllegalArgumentException("fused convolution: a batch norm's scale and shift go together, as post-ops of the bf16 recipe only");
        }
        OnednnInferenceConv conv = new OnednnInferenceConv(c, h, w, k, r, s, oh, ow, p, weights, bias, scale, shift, bf16, srcBlocked, dstBlocked, addend, relu);
        OnednnCall.Context ctx = context();
        try {
            conv.key(ctx, maxRows, Onednn.threadsForThisCall());
            if (ctx.find(KEY_LENGTH, OnednnInferenceConv::create).primitive != null) return conv;
        } finally {
            OnednnCall.release(ctx);
        }
        conv.close();
        return null;
    }

    private OnednnInferenceConv(int c, int h, int w, int k, int r, int s, int oh, int ow, Conv2dParams p, MemorySegment weights, MemorySegment bias,
                                MemorySegment scale, MemorySegment shift, boolean bf16, boolean srcBlocked, boolean dstBlocked, boolean addend,
                                boolean relu) {
        this.c = c;
        this.h = h;
        this.w = w;
        this.k = k;
        this.r = r;
        this.s = s;
        this.oh = oh;
        this.ow = ow;
        this.params = p;
        this.srcBlocked = srcBlocked;
        this.dstBlocked = dstBlocked;
        this.addend = addend;
        this.relu = relu;
        this.bf16 = bf16;
        long count = (long) k * c * r * s;
        if (bf16) {
            this.weights = arena.allocate(count * Short.BYTES, 64);
            CpuKernels.toBf16(weights, this.weights, count); // nearest even, the recipe's rounding
        } else {
            this.weights = arena.allocate(count * Float.BYTES, 64);
            MemorySegment.copy(weights, 0, this.weights, 0, count * Float.BYTES);
        }
        this.bias = arena.allocate((long) k * Float.BYTES, 64);
        MemorySegment.copy(bias, 0, this.bias, 0, (long) k * Float.BYTES);
        this.scale = scale == null ? null : arena.allocate((long) k * Float.BYTES, 64).copyFrom(scale.asSlice(0, (long) k * Float.BYTES));
        this.shift = shift == null ? null : arena.allocate((long) k * Float.BYTES, 64).copyFrom(shift.asSlice(0, (long) k * Float.BYTES));
    }

    /**
     * y = relu?(conv(x) + b (+ add)) for {@code rows} images (bf16: relu?((conv(x) + b) * scale +
     * shift (+ add)), x bfloat16 as {@link #toBf16} leaves it); {@code add} null unless made with an addend.
     */
    public void run(MemorySegment x, MemorySegment add, MemorySegment y, int rows) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = context();
        try {
            key(ctx, rows, threads);
            OnednnCall.Primitive p = ctx.find(KEY_LENGTH, OnednnInferenceConv::create);
            if (p.primitive == null) {
                throw new IllegalStateException("oneDNN has no fused convolution for " + rows + " rows of [" + c + ", " + h + ", " + w + "] -> [" + k + ", "
                    + oh + ", " + ow + "] though it had one when the plan was compiled; run with -Ddistill4j.onednn.fuse=false");
            }
            ctx.bind(0, x);
            ctx.bind(1, packedWeights(p));
            ctx.bind(2, y);
            ctx.bind(3, bias);
            int next = 4;
            if (scale != null) {
                ctx.bind(next++, scale);
                ctx.bind(next++, shift);
            }
            if (addend) ctx.bind(next, add);
            ctx.execute();
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /**
     * plain [rows, c, h, w] (NCHW) = blocked [rows, c/16, h, w, 16] (nChw16c): a layer that reads
     * NCHW after a blocked one.
     */
    public static void toPlain(MemorySegment blocked, MemorySegment plain, int rows, int c, int h, int w) {
        reorder(blocked, plain, rows, c, h, w, dnnl_h.dnnl_nChw16c, dnnl_h.dnnl_nchw, dnnl_h.dnnl_f32);
    }

    /**
     * bf16 [rows, c, h, w] = f32 rounded to bfloat16 (nearest even, as {@link org.distill4j.core.Bf16#fromFloat}),
     * in the same layout (nChw16c when {@code blocked}, else NCHW): a bf16 convolution's input.
     * oneDNN's reorder flushes subnormal floats to a zero of their sign, which changes no product
     * on a CPU with AVX512-BF16: its dot-product instruction (vdpbf16ps) takes subnormal bf16
     * inputs as zero anyway (InferencePlanFusedTest.bf16InputRoundingIsNearestEven).
     */
    public static void toBf16(MemorySegment f32, MemorySegment bf16, int rows, int c, int h, int w, boolean blocked) {
        int tag = blocked ? dnnl_h.dnnl_nChw16c : dnnl_h.dnnl_nchw;
        reorder(f32, bf16, rows, c, h, w, tag, tag, dnnl_h.dnnl_bf16);
    }

    /** to = from, [rows, c, h, w], float32 in layout fromTag to toType in layout toTag (a oneDNN reorder primitive, cached). */
    private static void reorder(MemorySegment from, MemorySegment to, int rows, int c, int h, int w, int fromTag, int toTag, int toType) {
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = context();
        try {
            int[] key = ctx.key;
            java.util.Arrays.fill(key, 0, KEY_LENGTH, 0);
            key[0] = REORDER;
            key[1] = rows;
            key[2] = c;
            key[3] = h;
            key[4] = w;
            key[5] = threads;
            key[6] = fromTag;
            key[7] = toTag;
            key[8] = toType;
            ctx.find(KEY_LENGTH, OnednnInferenceConv::createReorder);
            ctx.bind(0, from);
            ctx.bind(1, to);
            ctx.execute();
        } finally {
            OnednnCall.release(ctx);
        }
    }

    /** A call context; with all busy (more calls in flight than contexts), waits for one rather than fail. */
    private static OnednnCall.Context context() {
        OnednnCall.Context ctx;
        while ((ctx = OnednnCall.claim()) == null) Thread.yield();
        return ctx;
    }

    /** The problem: op, rows, x [c, h, w], w [k, c, r, s], y [k, oh, ow], padding, stride, threads, layouts, post-ops. */
    private void key(OnednnCall.Context ctx, int rows, int threads) {
        int[] key = ctx.key;
        key[0] = FUSED;
        key[1] = rows;
        key[2] = c;
        key[3] = h;
        key[4] = w;
        key[5] = k;
        key[6] = r;
        key[7] = s;
        key[8] = oh;
        key[9] = ow;
        key[10] = params.padH();
        key[11] = params.padW();
        key[12] = params.strideH();
        key[13] = params.strideW();
        key[14] = threads;
        key[15] = srcBlocked ? 1 : 0;
        key[16] = dstBlocked ? 1 : 0;
        key[17] = addend ? 1 : 0;
        key[18] = relu ? 1 : 0;
        key[19] = bf16 ? 1 : 0;
        key[20] = scale != null ? 1 : 0;
    }

    /** The weights in the layout primitive {@code p} takes (its argument 1), reordered on the first call that meets that layout. */
    private MemorySegment packedWeights(OnednnCall.Primitive p) {
        OnednnCall.Primitive[] seen = packedFor;
        for (int i = 0; i < seen.length; i++) if (seen[i] == p) return packed[i];
        synchronized (this) {
            seen = packedFor;
            MemorySegment[] copies = packed;
            for (int i = 0; i < seen.length; i++) if (seen[i] == p) return copies[i];
            MemorySegment md = p.mds[1], copy = null;
            for (int i = 0; i < seen.length && copy == null; i++) {
                if (dnnl_h.dnnl_memory_desc_equal(seen[i].mds[1], md) == 1) copy = copies[i];
            }
            if (copy == null) {
                copy = arena.allocate(dnnl_h.dnnl_memory_desc_get_size(md), 64);
                try (Arena tmp = Arena.ofConfined()) {
                    MemorySegment plainMd = OnednnCall.plainOfType(tmp, bf16 ? dnnl_h.dnnl_bf16 : dnnl_h.dnnl_f32, dnnl_h.dnnl_oihw, k, c, r, s);
                    try {
                        Onednn.reorderOnce(plainMd, weights, md, copy);
                    } finally {
                        dnnl_h.dnnl_memory_desc_destroy(plainMd);
                    }
                }
            }
            OnednnCall.Primitive[] nextSeen = java.util.Arrays.copyOf(seen, seen.length + 1);
            MemorySegment[] nextCopies = java.util.Arrays.copyOf(copies, copies.length + 1);
            nextSeen[seen.length] = p;
            nextCopies[seen.length] = copy;
            packed = nextCopies; // before packedFor: a reader that sees p in packedFor finds its copy
            packedFor = nextSeen;
            return copy;
        }
    }

    @Override
    public void close() {
        arena.close();
    }

    /** The fused convolution of a key; left declined when oneDNN has no implementation. */
    private static OnednnCall.Primitive create(int[] key, boolean cached) {
        OnednnCall.Primitive prim = new OnednnCall.Primitive(key, cached);
        int n = key[1], c = key[2], h = key[3], w = key[4], k = key[5], r = key[6], s = key[7], oh = key[8], ow = key[9];
        boolean srcBlocked = key[15] == 1, dstBlocked = key[16] == 1, addend = key[17] == 1, relu = key[18] == 1;
        boolean bf16 = key[19] == 1, norm = key[20] == 1;
        int ab = bf16 ? dnnl_h.dnnl_bf16 : dnnl_h.dnnl_f32; // x and W; y, b and the post-ops' tensors are float32
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            // A blocked tensor is given as nChw16c, so the primitive takes it as it is; a plain one as NCHW, with "any" asked,
            // so oneDNN picks its fast layout and the context reorders around the call (as OnednnConv does).
            MemorySegment src = prim.descOfType(arena, ab, srcBlocked ? dnnl_h.dnnl_nChw16c : dnnl_h.dnnl_nchw, n, c, h, w);
            MemorySegment dst = prim.desc(arena, dstBlocked ? dnnl_h.dnnl_nChw16c : dnnl_h.dnnl_nchw, n, k, oh, ow);
            MemorySegment srcAsked = srcBlocked ? src : prim.descOfType(arena, ab, dnnl_h.dnnl_format_tag_any, n, c, h, w);
            MemorySegment dstAsked = dstBlocked ? dst : prim.desc(arena, dnnl_h.dnnl_format_tag_any, n, k, oh, ow);
            MemorySegment weightsAny = prim.descOfType(arena, ab, dnnl_h.dnnl_format_tag_any, k, c, r, s);
            MemorySegment perChannel = norm ? prim.desc(arena, dnnl_h.dnnl_nchw, 1, k, 1, 1) : null; // broadcast over n, h, w
            MemorySegment biasMd = prim.desc(arena, dnnl_h.dnnl_a, k);
            MemorySegment strides = arena.allocateFrom(JAVA_LONG, key[12], key[13]);
            MemorySegment dilates = arena.allocateFrom(JAVA_LONG, 0, 0);
            MemorySegment padding = arena.allocateFrom(JAVA_LONG, key[10], key[11]);
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            int status;
            try {
                if (addend || relu || norm) {
                    OnednnCall.setPostOps(attr, out, postOps -> {
                        if (norm) {
                            DnnlException.check(dnnl_h.dnnl_post_ops_append_binary(postOps, dnnl_h.dnnl_binary_mul, perChannel), "dnnl_post_ops_append_binary");
                            DnnlException.check(dnnl_h.dnnl_post_ops_append_binary(postOps, dnnl_h.dnnl_binary_add, perChannel), "dnnl_post_ops_append_binary");
                        }
                        if (addend) DnnlException.check(dnnl_h.dnnl_post_ops_append_binary(postOps, dnnl_h.dnnl_binary_add, dst), "dnnl_post_ops_append_binary");
                        if (relu) OnednnCall.appendRelu(postOps);
                    });
                }
                status = dnnl_h.dnnl_convolution_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_inference, dnnl_h.dnnl_convolution_direct,
                    srcAsked, weightsAny, biasMd, dstAsked, strides, dilates, padding, padding, attr);
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            if (status == dnnl_h.dnnl_unimplemented) return prim;
            DnnlException.check(status, "dnnl_convolution_forward_primitive_desc_create (fused) for " + java.util.Arrays.toString(key));
            MemorySegment pd = out.get(ADDRESS, 0);
            prim.descriptor(pd, out);
            // The weights argument is given in the layout the primitive chose (our packed copy): no reorder per call.
            MemorySegment chosenWeights = dnnl_h.dnnl_primitive_desc_query_md(pd, dnnl_h.dnnl_query_weights_md, 0);
            // Binding order: x, W, y, b, then the binary post-ops' tensors in chain order (scale, shift, addend); a binary
            // post-op's tensor is DNNL_ARG_ATTR_MULTIPLE_POST_OP(index) | DNNL_ARG_SRC_1, MULTIPLE_POST_OP(i) = BASE * (i + 1).
            java.util.List<Integer> args = new java.util.ArrayList<>(java.util.List.of(dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_WEIGHTS, dnnl_h.DNNL_ARG_DST,
                dnnl_h.DNNL_ARG_BIAS));
            java.util.List<MemorySegment> mds = new java.util.ArrayList<>(java.util.List.of(src, chosenWeights, dst, biasMd));
            int postOp = 0;
            if (norm) {
                for (int i = 0; i < 2; i++) {
                    args.add(dnnl_h.DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE * (postOp++ + 1) | dnnl_h.DNNL_ARG_SRC_1);
                    mds.add(perChannel);
                }
            }
            if (addend) {
                args.add(dnnl_h.DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE * (postOp + 1) | dnnl_h.DNNL_ARG_SRC_1);
                mds.add(dst);
            }
            prim.arguments(args.stream().mapToInt(Integer::intValue).toArray(), mds.toArray(new MemorySegment[0]));
            prim.layout(0, dnnl_h.dnnl_primitive_desc_query_md(pd, dnnl_h.dnnl_query_src_md, 0), false, out);
            prim.layout(2, dnnl_h.dnnl_primitive_desc_query_md(pd, dnnl_h.dnnl_query_dst_md, 0), true, out);
            prim.create(out);
            return prim;
        } catch (RuntimeException ex) {
            prim.destroy();
            throw ex;
        }
    }

    /** The reorder of a key (op, rows, c, h, w, threads, from tag, to tag, to type): float32 in, either type out. */
    private static OnednnCall.Primitive createReorder(int[] key, boolean cached) {
        OnednnCall.Primitive prim = new OnednnCall.Primitive(key, cached);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            MemorySegment from = prim.desc(arena, key[6], key[1], key[2], key[3], key[4]);
            MemorySegment to = prim.descOfType(arena, key[8], key[7], key[1], key[2], key[3], key[4]);
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            try {
                DnnlException.check(dnnl_h.dnnl_reorder_primitive_desc_create(out, from, ENGINE, to, ENGINE, attr), "dnnl_reorder_primitive_desc_create");
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            prim.descriptor(out.get(ADDRESS, 0), out);
            prim.arguments(new int[] {dnnl_h.DNNL_ARG_FROM, dnnl_h.DNNL_ARG_TO}, from, to);
            prim.create(out);
            return prim;
        } catch (RuntimeException ex) {
            prim.destroy();
            throw ex;
        }
    }

    /** The implementation oneDNN chose for each cached fused convolution (for tests and reports). */
    public static java.util.List<String> implementations() {
        return OnednnCall.implementations(FUSED);
    }

    /**
     * Folds an eval-mode batch norm (per output channel: y = (v - mean) / sqrt(var + eps) * gamma +
     * beta) into a convolution's weights W [k, crs] and bias b [k] (null: none): W' = W * scale,
     * b' = (b - mean) * scale + beta with scale = gamma / sqrt(var + eps), in double, rounded once.
     * Returns {W', b'} as float arrays.
     */
    public static float[][] foldBatchNorm(MemorySegment weights, MemorySegment bias, int k, long crs, MemorySegment gamma, MemorySegment beta,
                                          MemorySegment mean, MemorySegment var, float eps) {
        double[] scale = batchNormScaleShift(gamma, beta, mean, var, eps, k)[0];
        float[] wf = new float[Math.toIntExact(k * crs)], bf = new float[k];
        for (int o = 0; o < k; o++) {
            for (long i = 0; i < crs; i++) wf[(int) (o * crs + i)] = (float) (weights.getAtIndex(JAVA_FLOAT, o * crs + i) * scale[o]);
            double b = bias == null ? 0 : bias.getAtIndex(JAVA_FLOAT, o);
            bf[o] = (float) ((b - mean.getAtIndex(JAVA_FLOAT, o)) * scale[o] + beta.getAtIndex(JAVA_FLOAT, o));
        }
        return new float[][] {wf, bf};
    }

    /**
     * An eval-mode batch norm over k channels as y = x scale + shift: {scale, shift} in double,
     * scale = gamma / sqrt(var + eps), shift = beta - mean scale (the fold above, and the bf16
     * convolution's post-ops, which take them rounded to float).
     */
    public static double[][] batchNormScaleShift(MemorySegment gamma, MemorySegment beta, MemorySegment mean, MemorySegment var, float eps, int k) {
        double[] scale = new double[k], shift = new double[k];
        for (int o = 0; o < k; o++) {
            scale[o] = gamma.getAtIndex(JAVA_FLOAT, o) / Math.sqrt((double) var.getAtIndex(JAVA_FLOAT, o) + eps);
            shift[o] = beta.getAtIndex(JAVA_FLOAT, o) - mean.getAtIndex(JAVA_FLOAT, o) * scale[o];
        }
        return new double[][] {scale, shift};
    }
}
