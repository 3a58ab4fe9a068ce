package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicReferenceArray;
import org.distill4j.bindings.Downcalls;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.core.Activation;

/**
 * A linear layer with constant weights on oneDNN's matmul primitive, the weights reordered once
 * into the layout oneDNN's kernel reads (its "packed" layout) and kept: y [rows, n] = x [rows, k]
 * W^T + b, W [n, k] and b [n] row-major float32 (torch.nn.Linear's layout), x and y dense
 * row-major. {@link OnednnMatmul} is the general gemm, which reads B in place on every call and so
 * re-packs it each time (oneDNN's brgemm matmul copies blocks of a plain B into its own layout as
 * it goes); this class is for weights that do not change between calls: an inference plan's
 * ({@link org.distill4j.core.nn.InferencePlan}: the Predictor, a frozen teacher's forward), as ONNX
 * Runtime prepacks a session's constant weights.
 *
 * <p>Which calls use the packed copy: those {@link CpuBlas} would send to oneDNN anyway (at least
 * two rows and 2^20 multiply-adds, {@link CpuBlas#onednnPays}); below that, oneDNN's fixed cost
 * per call loses to OpenBLAS (one row is a gemv, which packs nothing; measured in
 * bench/RESULTS.md), so those row counts run {@link CpuBlas#sgemm} on the plain W and add the bias.
 * The two paths give the same results as {@link CpuBlas#sgemm} + bias add on W for the same row
 * count (the packed matmul runs the same brgemm kernel; bit for bit in our tests).
 *
 * <p><b>The weights are a snapshot.</b> The constructor packs W and copies b into native memory
 * this object owns, and, unless the caller says its W is fixed ({@code weightsFixed}), copies the
 * plain W too for the small row counts; later writes to the caller's W or b are then not seen by
 * any call. That is the invalidation rule: an owner whose weights may change makes a new one. The
 * Predictor compiles its plan, and so packs, once when it is made, and serves those weights (a
 * Predictor that loaded its model owns it, so nothing can write it: no plain copy); the trainer
 * packs a frozen teacher's weights once per {@code fit}, during which nothing writes them.
 *
 * <p>Primitives: one per (rows, OpenMP thread count), made on first use and kept until
 * {@link #close()}; each is created with the packed weights' exact memory descriptor, so every row
 * count reads the one packed copy (if oneDNN wants another layout for some row count, that row
 * count gets a second copy, reordered from the first). The bias goes to the kernel as matmul's
 * bias argument (added to the float32 accumulator before the store, as a separate bias add would).
 *
 * <p><b>bf16</b> ({@code bf16} in the constructor: a frozen teacher or a Predictor asked to run in
 * bf16): W is packed as bfloat16 (oneDNN's f32 -> bf16 reorder, round to nearest even), each call
 * rounds x to bfloat16 (nearest even, {@link CpuKernels#toBf16}) into its context's buffer, and
 * the primitive multiplies bf16 by bf16 into a float32 accumulator, float32 bias, float32 y: the
 * recipe of {@link CpuBlas#gemmBf16} (products of bf16 values are exact in float32; only the
 * summation order is oneDNN's). The data types are fixed in the primitive, not permitted through
 * fpmath_mode, so a CPU without bf16 instructions runs the same numerics (oneDNN's emulation) or
 * has no implementation (the constructor then throws {@link UnsupportedOperationException}).
 * Every row count, one row included, runs on the packed copy (OpenBLAS has no bf16 gemm).
 *
 * <p>Execution state (stream, memory objects, scratchpad) is per {@link Context}, one per thread
 * that runs it at a time (an inference workspace); the primitives and the packed weights are
 * shared and read-only, so contexts run concurrently. A warm call (a row count seen before in this
 * context) allocates nothing: two data handles re-pointed, one execute.
 */
public final class OnednnPackedMatmul implements AutoCloseable {
    private static final MemorySegment ENGINE = Onednn.engine();

    private final int n, k, maxRows;
    /** bf16 weights and inputs (float32 sums and output), else float32 throughout. */
    private final boolean bf16;
    /** y = max(x W^T + b, 0): ReLU as the matmul's eltwise post-op (an inference plan's Linear then ReLU). */
    private final boolean relu;
    /** oneDNN's data type of W and x: dnnl_bf16 or dnnl_f32. */
    private final int abType;
    /** Row counts from this one up run on the packed copy; fewer on CpuBlas.sgemm over plainWeight. */
    private final int minPackedRows;
    /** W [n, k] row-major for the small row counts: the caller's (weightsFixed) or our copy. */
    private final MemorySegment plainWeight;
    private final Arena arena = Arena.ofShared(); // packed weights, the bias copy, the extra copies
    /** The first primitive descriptor, kept: it owns the packed weights' memory descriptor packedMd. */
    private final MemorySegment packingDesc, packedMd;
    /** The bias's descriptor [1, n] (ours), null without a bias. */
    private final MemorySegment biasMd;
    private final MemorySegment packed, bias;
    private final long packedBytes;
    private final String implementation;
    /**
     * Primitives by slot t * (maxRows + 1) + rows, t = 0 for one OpenMP thread and 1 for the
     * process default; an atomic array so a thread that reads an entry another made sees it whole.
     */
    private final AtomicReferenceArray<Entry> entries;
    private boolean closed;

    /** One row count's primitive and what a call needs to know about it. */
    private static final class Entry {
        final int index; // into a context's memory-object table
        MemorySegment primitiveDesc, primitive, srcMd, dstMd;
        /** Owned by primitiveDesc. */
        MemorySegment weightsMd, scratchpadMd;
        /** The packed copy this row count reads: the shared one, or a second copy in the layout it wants. */
        MemorySegment weights;
        long scratchpadBytes;

        Entry(int index) {
            this.index = index;
        }

        void destroy() {
            if (primitive != null) dnnl_h.dnnl_primitive_destroy(primitive);
            if (primitiveDesc != null) dnnl_h.dnnl_primitive_desc_destroy(primitiveDesc);
            if (srcMd != null) dnnl_h.dnnl_memory_desc_destroy(srcMd);
            if (dstMd != null) dnnl_h.dnnl_memory_desc_destroy(dstMd);
        }
    }

    /** Whether the CPU engine is oneDNN (and loaded): where inference plans pack their linear layers. */
    public static boolean enabled() {
        return Onednn.available() && CpuBlas.engine() == CpuEngine.ONEDNN;
    }

    /**
     * Whether packing W [n, k] pays for calls of up to maxRows rows: the CPU engine is oneDNN and
     * oneDNN would run the largest call ({@link CpuBlas#onednnPays}). Otherwise a plan runs the
     * plain gemm and packs nothing.
     */
    public static boolean pays(int n, int k, int maxRows) {
        return enabled() && CpuBlas.onednnPays(maxRows, n, k, 1);
    }

    /**
     * Packs W [n, k] (and copies b [n], or no bias when null) for calls of 1 to {@code maxRows}
     * rows. With {@code weightsFixed} the caller promises W never changes while this object lives
     * (it is read in place by the small row counts); otherwise W is copied too, so no call sees
     * a later write.
     */
    public OnednnPackedMatmul(MemorySegment weight, MemorySegment bias, int n, int k, int maxRows, boolean weightsFixed) {
        this(weight, bias, n, k, maxRows, weightsFixed, false);
    }

    /**
     * As above; with {@code bf16} the weights are packed as bfloat16 and every call's x is rounded
     * to bfloat16 (float32 sums, bias and y; see the class comment). Throws
     * {@link UnsupportedOperationException} when oneDNN has no bf16 matmul for this shape here.
     */
    public OnednnPackedMatmul(MemorySegment weight, MemorySegment bias, int n, int k, int maxRows, boolean weightsFixed, boolean bf16) {
        this(weight, bias, n, k, maxRows, weightsFixed, bf16, false);
    }

    /**
     * As above; with {@code relu}, y = ReLU(x W^T + b), the ReLU applied by the matmul kernel to
     * the float32 result before it is stored (oneDNN's eltwise post-op: max(y, +0), so negative
     * values, -0 and NaN give +0, as our ReLU does) and by our ReLU kernel on the small-row path.
     */
    public OnednnPackedMatmul(MemorySegment weight, MemorySegment bias, int n, int k, int maxRows, boolean weightsFixed, boolean bf16, boolean relu) {
        if (!Onednn.available()) throw new IllegalStateException("oneDNN is not available: " + Onednn.unavailableReason());
        if (n < 1 || k < 1 || maxRows < 1) throw new IllegalArgumentException("packed matmul: n, k and maxRows must be >= 1, got " + n + ", " + k + ", " + maxRows);
        long wBytes = (long) n * k * Float.BYTES;
        if (weight.byteSize() < wBytes) throw new IllegalArgumentException("packed matmul: W holds " + weight.byteSize() + " bytes, [" + n + ", " + k + "] needs " + wBytes);
        if (bias != null && bias.byteSize() < (long) n * Float.BYTES) {
            throw new IllegalArgumentException("packed matmul: b holds " + bias.byteSize() + " bytes, [" + n + "] needs " + (long) n * Float.BYTES);
        }
        this.n = n;
        this.k = k;
        this.maxRows = maxRows;
        this.bf16 = bf16;
        this.relu = relu;
        this.abType = bf16 ? dnnl_h.dnnl_bf16 : dnnl_h.dnnl_f32;
        int min = 2;
        while (min <= maxRows && !CpuBlas.onednnPays(min, n, k, 1)) min++;
        this.minPackedRows = bf16 ? 1 : min; // bf16: no plain-gemm path for small row counts
        this.entries = new AtomicReferenceArray<>(2 * (maxRows + 1));
        MemorySegment desc = null, biasDesc = null;
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(ADDRESS);
            if (bias != null) biasDesc = Onednn.memoryDesc(tmp, new long[] {1, n}, new long[] {n, 1}, dnnl_h.dnnl_f32);
            // The layout oneDNN wants for W: ask with format "any" at the largest row count.
            MemorySegment anyMd = anyWeightsMd(tmp);
            try {
                desc = matmulDesc(tmp, maxRows, anyMd, biasDesc);
            } finally {
                dnnl_h.dnnl_memory_desc_destroy(anyMd);
            }
            if (desc == null && bf16) {
                throw new UnsupportedOperationException("oneDNN has no bf16 matmul for a [" + maxRows + ", " + k + "] x [" + k + ", " + n + "] linear layer on this CPU");
            }
            if (desc == null) throw new IllegalStateException("oneDNN has no matmul for a [" + maxRows + ", " + k + "] x [" + k + ", " + n + "] linear layer");
            MemorySegment wantMd = dnnl_h.dnnl_primitive_desc_query_md(desc, dnnl_h.dnnl_query_weights_md, 0);
            long bytes = dnnl_h.dnnl_memory_desc_get_size(wantMd);
            MemorySegment packedCopy = arena.allocate(Math.max(bytes, 64), 64);
            // W [n, k] row-major is the logical [k, n] weights with strides (1, k); for bf16 the reorder
            // also converts float32 -> bf16 (oneDNN rounds to nearest even, as Bf16.fromFloat; tested).
            MemorySegment plainMd = Onednn.memoryDesc(tmp, new long[] {k, n}, new long[] {1, k}, dnnl_h.dnnl_f32);
            try {
                Onednn.reorderOnce(plainMd, weight, wantMd, packedCopy);
            } finally {
                dnnl_h.dnnl_memory_desc_destroy(plainMd);
            }
            MemorySegment plainCopy = weight.asSlice(0, wBytes);
            if (!weightsFixed && minPackedRows > 1 && !bf16) {
                plainCopy = arena.allocate(wBytes, 64);
                MemorySegment.copy(weight, 0, plainCopy, 0, wBytes);
            }
            MemorySegment biasCopy = null;
            if (bias != null) {
                biasCopy = arena.allocate((long) n * Float.BYTES, 64);
                MemorySegment.copy(bias, 0, biasCopy, 0, (long) n * Float.BYTES);
            }
            this.implementation = dnnl_h.dnnl_primitive_desc_query(desc, dnnl_h.dnnl_query_impl_info_str, 0, out) == dnnl_h.dnnl_success
                ? Downcalls.cString(out.get(ADDRESS, 0), "?") : "?";
            this.packingDesc = desc;
            this.packedMd = wantMd;
            this.packedBytes = bytes;
            this.packed = packedCopy;
            this.bias = biasCopy;
            this.biasMd = biasDesc;
            this.plainWeight = plainCopy;
        } catch (RuntimeException e) {
            if (desc != null) dnnl_h.dnnl_primitive_desc_destroy(desc);
            if (biasDesc != null) dnnl_h.dnnl_memory_desc_destroy(biasDesc);
            arena.close();
            throw e;
        }
    }

    /** W's logical [k, n] shape in oneDNN's format "any": the primitive picks the layout. The caller destroys it. */
    private MemorySegment anyWeightsMd(Arena tmp) {
        MemorySegment out = tmp.allocate(ADDRESS);
        DnnlException.check(dnnl_h.dnnl_memory_desc_create_with_tag(out, 2, tmp.allocateFrom(JAVA_LONG, k, n), abType,
            dnnl_h.dnnl_format_tag_any), "dnnl_memory_desc_create_with_tag");
        return out.get(ADDRESS, 0);
    }

    /** The oneDNN implementation that packed the weights, e.g. "brg_matmul:avx512_core" (for tests and reports). */
    public String implementation() {
        return implementation;
    }

    /** Bytes of the packed weights (oneDNN pads blocks, so at least n k 4). */
    public long packedBytes() {
        return packedBytes;
    }

    public int n() { return n; }
    public int k() { return k; }
    public int maxRows() { return maxRows; }

    /** Whether W and x are bf16 here (float32 sums and output). */
    public boolean bf16() { return bf16; }

    /** The fewest rows a call runs on the packed weights (fewer run the plain gemm); above maxRows when none do. */
    public int minPackedRows() { return minPackedRows; }

    /**
     * A matmul primitive descriptor for [rows, k] x weightsMd (+ bias) -> [rows, n] with a user
     * scratchpad, or null when oneDNN has no implementation for that weights layout.
     */
    private MemorySegment matmulDesc(Arena tmp, int rows, MemorySegment weightsMd, MemorySegment biasDesc) {
        MemorySegment out = tmp.allocate(ADDRESS);
        MemorySegment src = Onednn.memoryDesc(tmp, new long[] {rows, k}, new long[] {k, 1}, abType);
        MemorySegment dst = Onednn.memoryDesc(tmp, new long[] {rows, n}, new long[] {n, 1}, dnnl_h.dnnl_f32);
        MemorySegment attr = OnednnCall.userScratchpadAttr(out);
        try {
            if (relu) OnednnCall.setPostOps(attr, out, OnednnCall::appendRelu);
            int status = dnnl_h.dnnl_matmul_primitive_desc_create(out, ENGINE, src, weightsMd, biasDesc == null ? MemorySegment.NULL : biasDesc, dst, attr);
            if (status == dnnl_h.dnnl_unimplemented) return null;
            DnnlException.check(status, "dnnl_matmul_primitive_desc_create [" + rows + ", " + k + "] x [" + k + ", " + n + "]");
            return out.get(ADDRESS, 0);
        } finally {
            dnnl_h.dnnl_primitive_attr_destroy(attr);
            dnnl_h.dnnl_memory_desc_destroy(src);
            dnnl_h.dnnl_memory_desc_destroy(dst);
        }
    }

    /** The primitive for {@code rows} rows at this thread count, made on first use. */
    private Entry entry(int rows, int threads) {
        int slot = (threads == 1 ? 0 : maxRows + 1) + rows;
        Entry e = entries.get(slot);
        if (e != null) return e;
        synchronized (this) {
            if (closed) throw new IllegalStateException("packed matmul is closed");
            e = entries.get(slot);
            if (e == null) {
                e = create(rows, slot);
                entries.set(slot, e);
            }
            return e;
        }
    }

    private Entry create(int rows, int index) {
        Entry e = new Entry(index);
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(ADDRESS);
            e.weights = packed;
            e.primitiveDesc = matmulDesc(tmp, rows, packedMd, biasMd);
            if (e.primitiveDesc == null) {
                // oneDNN wants another layout for this row count: ask for it and reorder our packed copy into it.
                MemorySegment anyMd = anyWeightsMd(tmp);
                try {
                    e.primitiveDesc = matmulDesc(tmp, rows, anyMd, biasMd);
                } finally {
                    dnnl_h.dnnl_memory_desc_destroy(anyMd);
                }
                if (e.primitiveDesc == null) {
                    if (bf16) throw new UnsupportedOperationException("oneDNN has no bf16 matmul for a [" + rows + ", " + k + "] x [" + k + ", " + n + "] linear layer on this CPU");
                    throw new IllegalStateException("oneDNN has no matmul for a [" + rows + ", " + k + "] x [" + k + ", " + n + "] linear layer");
                }
                MemorySegment wantMd = dnnl_h.dnnl_primitive_desc_query_md(e.primitiveDesc, dnnl_h.dnnl_query_weights_md, 0);
                if (dnnl_h.dnnl_memory_desc_equal(wantMd, packedMd) == 0) {
                    e.weights = arena.allocate(Math.max(dnnl_h.dnnl_memory_desc_get_size(wantMd), 64), 64);
                    Onednn.reorderOnce(packedMd, packed, wantMd, e.weights);
                }
            }
            e.weightsMd = dnnl_h.dnnl_primitive_desc_query_md(e.primitiveDesc, dnnl_h.dnnl_query_weights_md, 0);
            e.srcMd = Onednn.memoryDesc(tmp, new long[] {rows, k}, new long[] {k, 1}, abType);
            e.dstMd = Onednn.memoryDesc(tmp, new long[] {rows, n}, new long[] {n, 1}, dnnl_h.dnnl_f32);
            e.scratchpadMd = dnnl_h.dnnl_primitive_desc_query_md(e.primitiveDesc, dnnl_h.dnnl_query_scratchpad_md, 0);
            e.scratchpadBytes = e.scratchpadMd.equals(MemorySegment.NULL) ? 0 : dnnl_h.dnnl_memory_desc_get_size(e.scratchpadMd);
            DnnlException.check(dnnl_h.dnnl_primitive_create(out, e.primitiveDesc), "dnnl_primitive_create");
            e.primitive = out.get(ADDRESS, 0);
            return e;
        } catch (RuntimeException ex) {
            e.destroy();
            throw ex;
        }
    }

    /**
     * y [rows, n] = x [rows, k] W^T + b on this context (one thread at a time per context).
     * Checks rows and the segments' sizes (cheap compares; nothing allocated).
     */
    public void run(Context ctx, MemorySegment x, MemorySegment y, int rows) {
        if (rows < 1 || rows > maxRows) throw new IllegalArgumentException("packed matmul: rows must be in [1, " + maxRows + "], got " + rows);
        if (x.byteSize() < (long) rows * k * Float.BYTES || y.byteSize() < (long) rows * n * Float.BYTES) {
            throw new IllegalArgumentException("packed matmul: x holds " + x.byteSize() + " bytes, y " + y.byteSize() + "; " + rows + " rows need "
                + (long) rows * k * Float.BYTES + " and " + (long) rows * n * Float.BYTES);
        }
        if (ctx.owner != this) throw new IllegalArgumentException("packed matmul: the context belongs to another packed matmul");
        if (rows < minPackedRows) {
            // Too little work for oneDNN's fixed cost (one row: OpenBLAS's gemv): the plain gemm, then the bias.
            CpuBlas.sgemm(false, true, rows, n, k, 1f, x, k, plainWeight, k, 0f, y, n);
            if (bias != null) CpuKernels.biasAddRows(y, bias, 0, rows, n);
            if (relu) CpuKernels.activation(Activation.RELU, 0f, y, y, 0, (long) rows * n);
            return;
        }
        Entry e = entry(rows, Onednn.threadsForThisCall());
        MemorySegment[] mem = ctx.memories(e);
        MemorySegment src = x;
        if (bf16) {
            // x [rows, k] float32 -> bf16, nearest even, into this context's buffer: the primitive's source.
            CpuKernels.toBf16(x, ctx.srcBf16, (long) rows * k);
            src = ctx.srcBf16;
        }
        DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(mem[0], src), "dnnl_memory_set_data_handle");
        DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(mem[2], y), "dnnl_memory_set_data_handle");
        int nargs = 3;
        Onednn.setArg(ctx.args, 0, dnnl_h.DNNL_ARG_SRC, mem[0]);
        Onednn.setArg(ctx.args, 1, dnnl_h.DNNL_ARG_WEIGHTS, mem[1]);
        Onednn.setArg(ctx.args, 2, dnnl_h.DNNL_ARG_DST, mem[2]);
        if (bias != null) Onednn.setArg(ctx.args, nargs++, dnnl_h.DNNL_ARG_BIAS, mem[3]);
        if (e.scratchpadBytes > 0) {
            DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(mem[4], ctx.scratch.at(e.scratchpadBytes)), "dnnl_memory_set_data_handle");
            Onednn.setArg(ctx.args, nargs++, dnnl_h.DNNL_ARG_SCRATCHPAD, mem[4]);
        }
        DnnlException.check(dnnl_h.dnnl_primitive_execute(e.primitive, ctx.stream, nargs, ctx.args), "dnnl_primitive_execute");
        DnnlException.check(dnnl_h.dnnl_stream_wait(ctx.stream), "dnnl_stream_wait");
    }

    /** A new execution context for one thread at a time; close it before this object. */
    public Context newContext() {
        return new Context(this);
    }

    /**
     * Per-thread execution state: a stream, the argument array, a scratchpad, memory objects per
     * row count used (src, weights, dst, bias, scratchpad), made on first use of that row count,
     * and for bf16 the rounded input x [maxRows, k] bf16.
     */
    public static final class Context implements AutoCloseable {
        private final OnednnPackedMatmul owner;
        private final Arena arena = Arena.ofShared();
        private final MemorySegment out, args;
        private final MemorySegment stream;
        private final MemorySegment[][] memories;
        private final Onednn.Scratch scratch = new Onednn.Scratch();
        /** bf16 only: x rounded to bf16, [maxRows, k] (null for float32). */
        private final MemorySegment srcBf16;

        private Context(OnednnPackedMatmul owner) {
            this.owner = owner;
            this.memories = new MemorySegment[2 * (owner.maxRows + 1)][];
            out = arena.allocate(ADDRESS);
            args = arena.allocate(dnnl_h.dnnl_exec_arg_t.LAYOUT, 5);
            srcBf16 = owner.bf16 ? arena.allocate((long) owner.maxRows * owner.k * Short.BYTES, 64) : null;
            try {
                DnnlException.check(dnnl_h.dnnl_stream_create(out, ENGINE, dnnl_h.dnnl_stream_default_flags), "dnnl_stream_create");
            } catch (RuntimeException e) {
                arena.close();
                throw e;
            }
            stream = out.get(ADDRESS, 0);
        }

        MemorySegment[] memories(Entry e) {
            MemorySegment[] mem = memories[e.index];
            if (mem != null) return mem;
            mem = new MemorySegment[5];
            mem[0] = Onednn.memory(out, e.srcMd, MemorySegment.NULL);
            mem[1] = Onednn.memory(out, e.weightsMd, e.weights);
            mem[2] = Onednn.memory(out, e.dstMd, MemorySegment.NULL);
            if (owner.bias != null) mem[3] = Onednn.memory(out, owner.biasMd, owner.bias);
            if (e.scratchpadBytes > 0) mem[4] = Onednn.memory(out, e.scratchpadMd, MemorySegment.NULL);
            memories[e.index] = mem;
            return mem;
        }

        @Override
        public void close() {
            for (MemorySegment[] mem : memories) {
                if (mem != null) for (MemorySegment m : mem) if (m != null) dnnl_h.dnnl_memory_destroy(m);
            }
            java.util.Arrays.fill(memories, null);
            dnnl_h.dnnl_stream_destroy(stream);
            scratch.close();
            arena.close();
        }
    }

    /** Destroys the primitives and frees the packed weights; contexts must be closed first. */
    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        for (int i = 0; i < entries.length(); i++) {
            Entry e = entries.getAndSet(i, null);
            if (e != null) e.destroy();
        }
        dnnl_h.dnnl_primitive_desc_destroy(packingDesc); // owns packedMd
        if (biasMd != null) dnnl_h.dnnl_memory_desc_destroy(biasMd);
        arena.close();
    }
}
