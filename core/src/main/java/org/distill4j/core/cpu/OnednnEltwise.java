package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.stream.Stream;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;

/**
 * GELU (exact and tanh) forward and backward on oneDNN's eltwise primitives (issue 23: eltwise
 * "where it wins"), for the CPU backend's activations and the CPU decoders' MLP, over float32
 * vectors of n elements (any shape: the tensor is described as 1-D). Our Java loops evaluate
 * erf / tanh in double per element (about 5 ns an element here); oneDNN's vectorised float32
 * kernels are within a few ulp of them (GPT-2-small's lm-step spent 7.7% of its time in the
 * Java GELU; bench/RESULTS.md, fifteenth session). The callers check the arguments first and run
 * their loops when this returns false (oneDNN not the engine, or -Ddistill4j.onednn.eltwise=false).
 *
 * <p>Backward takes x (the source), as oneDNN's use_src backward: dx = gelu'(x) dy.
 *
 * <p>Each problem (op, algorithm, n, OpenMP thread count) gets one primitive, made on first use and
 * cached ({@link OnednnCall}); a call allocates nothing once warm.
 */
public final class OnednnEltwise {
    private static final int FORWARD = 41, BACKWARD = 42, KEY_LENGTH = 6;
    private static final MemorySegment ENGINE = Onednn.engine();

    private OnednnEltwise() {}

    /** Whether GELU runs here: the oneDNN engine, unless -Ddistill4j.onednn.eltwise=false. */
    public static boolean enabled() {
        return ELTWISE_ON_ONEDNN && Onednn.available() && CpuBlas.engine() == CpuEngine.ONEDNN;
    }

    private static final boolean ELTWISE_ON_ONEDNN = !"false".equals(System.getProperty("distill4j.onednn.eltwise"));

    /** y [n] = gelu(x) (tanh approximation when {@code tanh}, else exact erf); y may be x. False, having done nothing, when not on oneDNN here. */
    public static boolean geluForward(boolean tanh, MemorySegment x, MemorySegment y, long n) {
        return run(FORWARD, tanh, x, null, y, n);
    }

    /** dx [n] = gelu'(x) dy; dx may be dy. False, having done nothing, when not on oneDNN here. */
    public static boolean geluBackward(boolean tanh, MemorySegment x, MemorySegment dy, MemorySegment dx, long n) {
        return run(BACKWARD, tanh, x, dy, dx, n);
    }

    /** The implementation oneDNN chose for each cached eltwise problem (for tests and reports). */
    static List<String> implementations() {
        return Stream.of(FORWARD, BACKWARD).flatMap(op -> OnednnCall.implementations(op).stream()).toList();
    }

    private static boolean run(int op, boolean tanh, MemorySegment x, MemorySegment dy, MemorySegment out, long n) {
        if (!enabled() || n < 1) return false;
        int threads = Onednn.threadsForThisCall();
        OnednnCall.Context ctx = OnednnCall.claim();
        if (ctx == null) return false;
        try {
            int[] key = ctx.key;
            key[0] = op;
            key[1] = tanh ? dnnl_h.dnnl_eltwise_gelu_tanh : dnnl_h.dnnl_eltwise_gelu_erf;
            key[2] = (int) (n >>> 31);   // n in two parts: a decoder's activation can pass 2^31 elements
            key[3] = (int) (n & 0x7FFFFFFFL);
            key[4] = threads;
            key[5] = 0;
            if (ctx.find(KEY_LENGTH, OnednnEltwise::create).primitive == null) return false;
            ctx.bind(0, x);
            if (op == BACKWARD) {
                ctx.bind(1, dy);
                ctx.bind(2, out);
            } else {
                ctx.bind(1, out);
            }
            ctx.execute();
            return true;
        } finally {
            OnednnCall.release(ctx);
        }
    }

    private static OnednnCall.Primitive create(int[] key, boolean cached) {
        OnednnCall.Primitive prim = new OnednnCall.Primitive(key, cached);
        int op = key[0], alg = key[1];
        long n = ((long) key[2] << 31) | key[3];
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            MemorySegment md = prim.desc(arena, dnnl_h.dnnl_a, n);
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            int status;
            try {
                if (op == FORWARD) {
                    status = dnnl_h.dnnl_eltwise_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_inference, alg, md, md, 0f, 0f, attr);
                } else {
                    status = dnnl_h.dnnl_eltwise_forward_primitive_desc_create(out, ENGINE, dnnl_h.dnnl_forward_training, alg, md, md, 0f, 0f,
                        MemorySegment.NULL);
                    MemorySegment hint = prim.hint(status, out, "dnnl_eltwise_forward_primitive_desc_create");
                    if (hint == null) return prim;
                    status = dnnl_h.dnnl_eltwise_backward_primitive_desc_create(out, ENGINE, alg, md, md, md, 0f, 0f, hint, attr);
                }
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            if (status == dnnl_h.dnnl_unimplemented) return prim;
            DnnlException.check(status, "dnnl_eltwise primitive_desc_create for " + java.util.Arrays.toString(key));
            prim.descriptor(out.get(ADDRESS, 0), out);
            if (op == FORWARD) prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DST}, md, md);
            else prim.arguments(new int[] {dnnl_h.DNNL_ARG_SRC, dnnl_h.DNNL_ARG_DIFF_DST, dnnl_h.DNNL_ARG_DIFF_SRC}, md, md, md);
            prim.create(out);
            return prim;
        } catch (RuntimeException ex) {
            prim.destroy();
            throw ex;
        }
    }
}
