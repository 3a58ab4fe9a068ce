package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicIntegerArray;
import org.distill4j.bindings.Downcalls;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;

/**
 * The CPU backend's gemm on oneDNN's matmul primitive: C = alpha op(A) op(B) + beta C over
 * row-major float32 (or bfloat16 A and B into a float32 C), one matrix or a strided batch, for
 * {@link CpuBlas} (which checks the arguments first; nothing here re-checks them).
 *
 * <p>Each distinct problem (transposes, sizes, leading dimensions, batch strides, whether alpha is
 * 1, beta, thread count) gets one primitive, created on first use and cached for the process, as
 * PyTorch's CPU build and our cuDNN path keep their per-shape choices:
 * <ul>
 *   <li>op(A) [m, k] and op(B) [k, n] are memory descriptors with strides, so a transpose or a
 *       leading dimension is a stride and nothing is copied; a strided batch is a third, outer dim
 *       (a stride of 0, a broadcast operand, is a batch dim of 1);</li>
 *   <li>alpha != 1 is a runtime scale on the source; beta != 0 is a sum post-op with scale beta
 *       (baked into the primitive, so beta is part of the key; in practice 0 or 1);</li>
 *   <li>the scratchpad is ours (user mode), so primitives can run from any thread at once.</li>
 * </ul>
 *
 * <p>Threads ({@link Onednn#threadsForThisCall()}): the count is part of the key because oneDNN
 * fixes its work split when it creates a primitive.
 *
 * <p>Per call, allocation-free once warm: a context (stream, argument array, memory objects of the
 * recent problems, scratchpad) is claimed from a fixed pool with one CAS, the problem found among
 * that context's recent ones by comparing fields, and the memory objects re-pointed at the caller's
 * segments. A call that finds every context busy, or a problem oneDNN declines (dnnl_unimplemented),
 * returns false and runs on the fallback engine.
 */
final class OnednnMatmul {
    /** Primitives kept for the process; past this many distinct problems a new one is made, used and destroyed per context. */
    private static final int CACHE_LIMIT = 4096;
    private static final MemorySegment ENGINE = Onednn.engine();

    private OnednnMatmul() {}

    // ---- the per-problem cache

    /** Everything a primitive is specialised on. Strides are 0 when batch == 1. */
    private record Key(boolean transA, boolean transB, int m, int n, int k, int lda, int ldb, int ldc, int batch,
                       long strideA, long strideB, long strideC, boolean scaled, int betaBits, int threads, int abType) {
        boolean matches(boolean ta, boolean tb, int m2, int n2, int k2, int la, int lb, int lc, int bt, long sa, long sb, long sc,
                        boolean sc2, int bb, int th, int ab) {
            return ta == transA && tb == transB && m2 == m && n2 == n && k2 == k && la == lda && lb == ldb && lc == ldc && bt == batch
                && sa == strideA && sb == strideB && sc == strideC && sc2 == scaled && bb == betaBits && th == threads && ab == abType;
        }
    }

    /**
     * One problem's primitive with its primitive descriptor and memory descriptors (the memory
     * objects are per context); {@code primitive} is null when oneDNN declined the problem.
     */
    private static final class Entry {
        final Key key;
        final boolean cached;
        MemorySegment primitiveDesc, primitive, src, weights, dst, scratchpad, scale;
        long scratchpadBytes;
        String implementation = "declined";

        Entry(Key key, boolean cached) {
            this.key = key;
            this.cached = cached;
        }

        void destroy() {
            if (primitive != null) dnnl_h.dnnl_primitive_destroy(primitive);
            if (primitiveDesc != null) dnnl_h.dnnl_primitive_desc_destroy(primitiveDesc); // owns the scratchpad descriptor
            for (MemorySegment md : new MemorySegment[] {src, weights, dst, scale}) if (md != null) dnnl_h.dnnl_memory_desc_destroy(md);
        }
    }

    private static final ConcurrentHashMap<Key, Entry> CACHE = new ConcurrentHashMap<>();

    /** The oneDNN implementation chosen for each cached problem, e.g. "brg_matmul:avx2" (for tests and reports). */
    static java.util.List<String> implementations() {
        return CACHE.values().stream().map(e -> e.key + " -> " + e.implementation).sorted().toList();
    }

    private static Entry entry(Key key) {
        Entry e = CACHE.get(key);
        if (e != null) return e;
        if (CACHE.size() >= CACHE_LIMIT) return create(key, false);
        return CACHE.computeIfAbsent(key, k -> create(k, true));
    }

    /**
     * A matrix operand as a memory descriptor: logical [rows, cols] (op(X)'s shape), stored
     * row-major with leading dimension ld, transposed when {@code trans} (then X is [cols, rows]
     * in memory); a batch > 1 adds an outer dim of that stride, or of size 1 when the stride is 0.
     * Null when the operand is a vector with a non-unit stride (one row whose elements are ld
     * apart, or one column whose rows are): oneDNN 3.8.1's matmul computed those wrongly in our
     * tests (CpuBlasTest, n = 1 or a transposed A with m = 1), so they go to the fallback engine.
     */
    private static MemorySegment operand(Arena arena, int rows, int cols, int ld, boolean trans, int batch, long stride, int dataType) {
        long rowStride = trans ? 1 : ld, colStride = trans ? ld : 1;
        if ((rows == 1 && cols > 1 && colStride != 1) || (cols == 1 && rows > 1 && rowStride != 1)) return null;
        if (rows == 1) rowStride = cols; // a size-1 dim's stride is free: give it the dense value, so the layout reads as plain row-major
        if (cols == 1) colStride = 1;
        if (batch == 1) return Onednn.memoryDesc(arena, new long[] {rows, cols}, new long[] {rowStride, colStride}, dataType);
        long outer = stride == 0 ? 1 : batch;
        long outerStride = stride == 0 ? (long) (trans ? cols : rows) * ld : stride;
        return Onednn.memoryDesc(arena, new long[] {outer, rows, cols}, new long[] {outerStride, rowStride, colStride}, dataType);
    }

    private static Entry create(Key key, boolean cached) {
        Entry e = new Entry(key, cached);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            e.src = operand(arena, key.m(), key.k(), key.lda(), key.transA(), key.batch(), key.strideA(), key.abType());
            e.weights = operand(arena, key.k(), key.n(), key.ldb(), key.transB(), key.batch(), key.strideB(), key.abType());
            e.dst = operand(arena, key.m(), key.n(), key.ldc(), false, key.batch(), key.strideC(), dnnl_h.dnnl_f32);
            if (e.src == null || e.weights == null || e.dst == null) {
                e.implementation = "declined: a strided vector operand";
                return e;
            }
            if (key.batch() > 1 && key.strideA() == 0 && key.strideB() == 0) {
                // oneDNN broadcasts a batch dim of 1 to the other operand's, never to dst's alone (dnnl_invalid_arguments).
                e.implementation = "declined: both operands broadcast";
                return e;
            }
            e.scale = Onednn.memoryDesc(arena, new long[] {1}, new long[] {1}, dnnl_h.dnnl_f32);
            MemorySegment attr = OnednnCall.userScratchpadAttr(out);
            int status;
            try {
                if (key.scaled()) {
                    // One scale for the whole source (mask 0), given at execution: dst = alpha (A B) [+ beta dst].
                    DnnlException.check(dnnl_h.dnnl_primitive_attr_set_scales_mask(attr, dnnl_h.DNNL_ARG_SRC, 0), "dnnl_primitive_attr_set_scales_mask");
                }
                float beta = Float.intBitsToFloat(key.betaBits());
                if (beta != 0f) {
                    // The sum post-op adds beta times dst's old value after the scaled product (BLAS's beta C).
                    OnednnCall.setPostOps(attr, out, postOps -> DnnlException.check(
                        dnnl_h.dnnl_post_ops_append_sum(postOps, beta, 0, dnnl_h.dnnl_data_type_undef), "dnnl_post_ops_append_sum"));
                }
                status = dnnl_h.dnnl_matmul_primitive_desc_create(out, ENGINE, e.src, e.weights, MemorySegment.NULL, e.dst, attr);
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            if (status == dnnl_h.dnnl_unimplemented) return e; // no implementation for these strides: the fallback engine runs it
            DnnlException.check(status, "dnnl_matmul_primitive_desc_create for " + key);
            e.primitiveDesc = out.get(ADDRESS, 0);
            if (dnnl_h.dnnl_primitive_desc_query(e.primitiveDesc, dnnl_h.dnnl_query_impl_info_str, 0, out) == dnnl_h.dnnl_success) {
                e.implementation = Downcalls.cString(out.get(ADDRESS, 0), "?");
            }
            e.scratchpad = dnnl_h.dnnl_primitive_desc_query_md(e.primitiveDesc, dnnl_h.dnnl_query_scratchpad_md, 0);
            e.scratchpadBytes = e.scratchpad.equals(MemorySegment.NULL) ? 0 : dnnl_h.dnnl_memory_desc_get_size(e.scratchpad);
            DnnlException.check(dnnl_h.dnnl_primitive_create(out, e.primitiveDesc), "dnnl_primitive_create");
            e.primitive = out.get(ADDRESS, 0);
            return e;
        } catch (RuntimeException ex) {
            e.destroy();
            throw ex;
        }
    }

    // ---- execution contexts

    private static final int CONTEXTS = 64;
    private static final Context[] POOL = new Context[CONTEXTS];
    private static final AtomicIntegerArray BUSY = new AtomicIntegerArray(CONTEXTS);

    /**
     * What one call needs besides the primitive, used by one thread at a time: a stream, the
     * argument array, the memory objects of its recent problems (src, weights, dst, scratchpad,
     * scale per problem) and a scratchpad buffer. Native memory from the global arena: there are
     * at most {@link #CONTEXTS}, kept for the process.
     */
    private static final class Context {
        static final int RECENT = 8;
        final MemorySegment stream, out, args, alpha;
        final Entry[] recent = new Entry[RECENT];
        final MemorySegment[][] memories = new MemorySegment[RECENT][];
        int replace;
        final Onednn.Scratch scratch = new Onednn.Scratch(); // kept for the process, as the context

        Context() {
            out = Arena.global().allocate(ADDRESS);
            DnnlException.check(dnnl_h.dnnl_stream_create(out, ENGINE, dnnl_h.dnnl_stream_default_flags), "dnnl_stream_create");
            stream = out.get(ADDRESS, 0);
            args = Arena.global().allocate(dnnl_h.dnnl_exec_arg_t.LAYOUT, 5);
            alpha = Arena.global().allocate(JAVA_FLOAT);
        }

        /** The slot of the recent problem with these fields, or -1. */
        int find(boolean ta, boolean tb, int m, int n, int k, int lda, int ldb, int ldc, int batch, long sa, long sb, long sc,
                 boolean scaled, int betaBits, int threads, int abType) {
            for (int i = 0; i < RECENT; i++) {
                Entry e = recent[i];
                if (e != null && e.key.matches(ta, tb, m, n, k, lda, ldb, ldc, batch, sa, sb, sc, scaled, betaBits, threads, abType)) return i;
            }
            return -1;
        }

        /** Puts e in a slot (round robin), with memory objects for it; the slot's previous problem's objects go. */
        int install(Entry e) {
            int slot = replace;
            replace = (replace + 1) % RECENT;
            release(slot);
            recent[slot] = e;
            if (e.primitive != null) {
                MemorySegment[] mem = new MemorySegment[5];
                mem[0] = Onednn.memory(out, e.src, MemorySegment.NULL);
                mem[1] = Onednn.memory(out, e.weights, MemorySegment.NULL);
                mem[2] = Onednn.memory(out, e.dst, MemorySegment.NULL);
                mem[3] = e.scratchpadBytes > 0 ? Onednn.memory(out, e.scratchpad, MemorySegment.NULL) : null;
                mem[4] = Onednn.memory(out, e.scale, alpha);
                memories[slot] = mem;
            }
            return slot;
        }

        private void release(int slot) {
            if (memories[slot] != null) for (MemorySegment m : memories[slot]) if (m != null) dnnl_h.dnnl_memory_destroy(m);
            memories[slot] = null;
            if (recent[slot] != null && !recent[slot].cached) recent[slot].destroy();
            recent[slot] = null;
        }



    }

    /** Claims a free context, starting at a slot picked by the thread's id (a thread tends to get its own back); -1 when all are busy. */
    private static int claim() {
        int start = (int) (Thread.currentThread().threadId() % CONTEXTS);
        for (int i = 0; i < CONTEXTS; i++) {
            int slot = (start + i) % CONTEXTS;
            if (BUSY.compareAndSet(slot, 0, 1)) {
                if (POOL[slot] == null) {
                    try {
                        POOL[slot] = new Context();
                    } catch (RuntimeException e) {
                        BUSY.set(slot, 0);
                        throw e;
                    }
                }
                return slot;
            }
        }
        return -1;
    }

    /**
     * C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch (X_i at element i * strideX of X; for
     * batch == 1 the strides are ignored). Arguments checked by CpuBlas; m, n, k >= 1. Returns
     * false, having done nothing, when oneDNN is not loaded, declines the problem, or every
     * context is busy: the caller then runs the fallback engine.
     */
    static boolean sgemm(boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda, long strideA,
                         MemorySegment b, int ldb, long strideB, float beta, MemorySegment c, int ldc, long strideC, int batch) {
        return gemm(transA, transB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, batch, dnnl_h.dnnl_f32);
    }

    /**
     * As {@link #sgemm} with A and B of {@code abType} (dnnl_f32, or dnnl_bf16: bfloat16 operands
     * whose products oneDNN accumulates in float32, AVX-512 BF16's dot products where the CPU has
     * them); C is float32 either way, strides and leading dimensions in elements.
     */
    static boolean gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda, long strideA,
                        MemorySegment b, int ldb, long strideB, float beta, MemorySegment c, int ldc, long strideC, int batch, int abType) {
        if (ENGINE == null) return false;
        if (batch == 1) strideA = strideB = strideC = 0;
        int threads = Onednn.threadsForThisCall();
        boolean scaled = alpha != 1f;
        int betaBits = Float.floatToRawIntBits(beta == 0f ? 0f : beta); // -0 and 0 are one problem
        int slot = claim();
        if (slot < 0) return false;
        try {
            Context ctx = POOL[slot];
            int r = ctx.find(transA, transB, m, n, k, lda, ldb, ldc, batch, strideA, strideB, strideC, scaled, betaBits, threads, abType);
            if (r < 0) {
                r = ctx.install(entry(new Key(transA, transB, m, n, k, lda, ldb, ldc, batch, strideA, strideB, strideC, scaled, betaBits,
                    threads, abType)));
            }
            Entry e = ctx.recent[r];
            if (e.primitive == null) return false;
            MemorySegment[] mem = ctx.memories[r];
            DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(mem[0], a), "dnnl_memory_set_data_handle");
            DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(mem[1], b), "dnnl_memory_set_data_handle");
            DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(mem[2], c), "dnnl_memory_set_data_handle");
            Onednn.setArg(ctx.args, 0, dnnl_h.DNNL_ARG_SRC, mem[0]);
            Onednn.setArg(ctx.args, 1, dnnl_h.DNNL_ARG_WEIGHTS, mem[1]);
            Onednn.setArg(ctx.args, 2, dnnl_h.DNNL_ARG_DST, mem[2]);
            int nargs = 3;
            if (e.scratchpadBytes > 0) {
                DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(mem[3], ctx.scratch.at(e.scratchpadBytes)), "dnnl_memory_set_data_handle");
                Onednn.setArg(ctx.args, nargs++, dnnl_h.DNNL_ARG_SCRATCHPAD, mem[3]);
            }
            if (scaled) {
                ctx.alpha.set(JAVA_FLOAT, 0, alpha);
                Onednn.setArg(ctx.args, nargs++, dnnl_h.DNNL_ARG_ATTR_SCALES | dnnl_h.DNNL_ARG_SRC, mem[4]);
            }
            DnnlException.check(dnnl_h.dnnl_primitive_execute(e.primitive, ctx.stream, nargs, ctx.args), "dnnl_primitive_execute");
            DnnlException.check(dnnl_h.dnnl_stream_wait(ctx.stream), "dnnl_stream_wait");
            return true;
        } finally {
            BUSY.set(slot, 0);
        }
    }
}
