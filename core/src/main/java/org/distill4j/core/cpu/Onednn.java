package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibrary;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.bindings.dnnl.omp_h;

/**
 * What every oneDNN primitive of the CPU backend shares: the library, found like OpenBLAS
 * ({@link NativeLibraries}), the one CPU engine of the process, the OpenMP thread count a call
 * runs with, and memory descriptors. The primitives themselves live in their own classes
 * ({@link OnednnMatmul}, ...), each with its per-shape cache.
 *
 * <p>Threads: this oneDNN runs on OpenMP, whose thread count is a per-thread setting. Each call
 * sets the calling thread's count to the process default, or to 1 while a caller holds the CPU
 * engine single-threaded ({@link CpuBlas#holdSingleThreaded()}: the decoder's and the Predictor's
 * own parallel loops) or runs a part of an {@link IntraOpPool} job, before it looks its primitive up; a primitive's key includes the count,
 * since oneDNN fixes its work split when it creates a primitive.
 */
final class Onednn {
    private static final NativeLibrary DNNL = NativeLibraries.forBindings(NativeLibraries.Library.DNNL);
    /** The CPU engine, made once and kept for the process (primitives and memory objects refer to it). */
    private static final MemorySegment ENGINE;
    /** OpenMP's thread count for a thread that never set one (OMP_NUM_THREADS, else the cores). */
    private static final int DEFAULT_THREADS;
    private static final String UNAVAILABLE;

    static {
        MemorySegment engine = null;
        int threads = 1;
        String unavailable = "";
        if (!DNNL.isLoaded()) {
            unavailable = DNNL.failure().orElseThrow().getMessage();
        } else {
            try {
                if (dnnl_h.dnnl_engine_get_count(dnnl_h.dnnl_cpu) < 1) throw new IllegalStateException("oneDNN reports no CPU engine");
                MemorySegment out = Arena.global().allocate(ADDRESS);
                DnnlException.check(dnnl_h.dnnl_engine_create(out, dnnl_h.dnnl_cpu, 0), "dnnl_engine_create");
                engine = out.get(ADDRESS, 0);
                threads = Math.max(1, omp_h.omp_get_max_threads());
            } catch (RuntimeException e) {
                unavailable = "oneDNN at " + DNNL.path().orElseThrow() + " cannot make a CPU engine: " + e.getMessage();
                engine = null;
            }
        }
        ENGINE = engine;
        DEFAULT_THREADS = threads;
        UNAVAILABLE = unavailable;
    }

    private Onednn() {}

    /** The CPU engine, or null when oneDNN is not usable here ({@link #unavailableReason()}). */
    static MemorySegment engine() {
        return ENGINE;
    }

    /** Sets the calling thread's OpenMP thread count for a primitive call and returns it (part of a primitive's key). */
    static int threadsForThisCall() {
        int threads = CpuBlas.singleThreadedHeld() || IntraOpPool.inPart() ? 1 : DEFAULT_THREADS;
        if (omp_h.omp_get_max_threads() != threads) omp_h.omp_set_num_threads(threads);
        return threads;
    }

    /** A memory descriptor: dims and strides in elements, outermost first. The caller destroys it (dnnl_memory_desc_destroy). */
    static MemorySegment memoryDesc(Arena arena, long[] dims, long[] strides, int dataType) {
        MemorySegment out = arena.allocate(ADDRESS);
        DnnlException.check(dnnl_h.dnnl_memory_desc_create_with_strides(out, dims.length, arena.allocateFrom(JAVA_LONG, dims), dataType,
            arena.allocateFrom(JAVA_LONG, strides)), "dnnl_memory_desc_create_with_strides");
        return out.get(ADDRESS, 0);
    }

    /** Copies {@code from} (layout fromMd) into {@code to} (layout toMd) with a reorder primitive, once. */
    static void reorderOnce(MemorySegment fromMd, MemorySegment from, MemorySegment toMd, MemorySegment to) {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(ADDRESS);
            DnnlException.check(dnnl_h.dnnl_reorder_primitive_desc_create(out, fromMd, ENGINE, toMd, ENGINE, MemorySegment.NULL),
                "dnnl_reorder_primitive_desc_create");
            MemorySegment pd = out.get(ADDRESS, 0);
            MemorySegment prim = null, stream = null, src = null, dst = null;
            try {
                DnnlException.check(dnnl_h.dnnl_primitive_create(out, pd), "dnnl_primitive_create (reorder)");
                prim = out.get(ADDRESS, 0);
                DnnlException.check(dnnl_h.dnnl_stream_create(out, ENGINE, dnnl_h.dnnl_stream_default_flags), "dnnl_stream_create");
                stream = out.get(ADDRESS, 0);
                src = memory(out, fromMd, from);
                dst = memory(out, toMd, to);
                MemorySegment args = tmp.allocate(dnnl_h.dnnl_exec_arg_t.LAYOUT, 2);
                setArg(args, 0, dnnl_h.DNNL_ARG_FROM, src);
                setArg(args, 1, dnnl_h.DNNL_ARG_TO, dst);
                DnnlException.check(dnnl_h.dnnl_primitive_execute(prim, stream, 2, args), "dnnl_primitive_execute (reorder)");
                DnnlException.check(dnnl_h.dnnl_stream_wait(stream), "dnnl_stream_wait");
            } finally {
                if (src != null) dnnl_h.dnnl_memory_destroy(src);
                if (dst != null) dnnl_h.dnnl_memory_destroy(dst);
                if (stream != null) dnnl_h.dnnl_stream_destroy(stream);
                if (prim != null) dnnl_h.dnnl_primitive_destroy(prim);
                dnnl_h.dnnl_primitive_desc_destroy(pd);
            }
        }
    }

    /** The size of one dnnl_exec_arg_t in an argument array. */
    private static final long ARG_SIZE = dnnl_h.dnnl_exec_arg_t.LAYOUT.byteSize();

    /** Sets entry {@code index} of a dnnl_exec_arg_t array (offsets, not a slice: no object per call). */
    static void setArg(MemorySegment args, int index, int arg, MemorySegment memory) {
        args.set(JAVA_INT, index * ARG_SIZE + dnnl_h.dnnl_exec_arg_t.arg$OFFSET, arg);
        args.set(ADDRESS, index * ARG_SIZE + dnnl_h.dnnl_exec_arg_t.memory$OFFSET, memory);
    }

    /** A memory object of descriptor {@code md} over {@code handle} (NULL: set per call), made through the caller's pointer cell {@code out}. */
    static MemorySegment memory(MemorySegment out, MemorySegment md, MemorySegment handle) {
        DnnlException.check(dnnl_h.dnnl_memory_create(out, md, ENGINE, handle), "dnnl_memory_create");
        return out.get(ADDRESS, 0);
    }

    /**
     * A call context's scratchpad: grown to the largest size asked and kept, in a shared arena
     * (oneDNN's OpenMP threads read it); one thread at a time uses it, as the context.
     */
    static final class Scratch implements AutoCloseable {
        private Arena arena;
        private MemorySegment buffer = MemorySegment.NULL;

        /** At least {@code bytes}, 64-byte aligned. */
        MemorySegment at(long bytes) {
            if (buffer.byteSize() < bytes) {
                if (arena != null) arena.close();
                arena = Arena.ofShared();
                buffer = arena.allocate(bytes, 64);
            }
            return buffer;
        }

        @Override
        public void close() {
            if (arena != null) arena.close();
            arena = null;
            buffer = MemorySegment.NULL;
        }
    }

    static boolean available() {
        return ENGINE != null;
    }

    static String unavailableReason() {
        return UNAVAILABLE;
    }

    /** "oneDNN 3.8.1 (path), OpenMP, 2 threads". */
    @SuppressWarnings("restricted") // FFM: dnnl_version returns a pointer to a static dnnl_version_t; sized to its layout to read it
    static String description() {
        if (!available()) return "oneDNN unavailable: " + UNAVAILABLE;
        MemorySegment v = dnnl_h.dnnl_version().reinterpret(dnnl_h.dnnl_version_t.LAYOUT.byteSize());
        int runtime = dnnl_h.dnnl_version_t.cpu_runtime(v);
        String rt = runtime == dnnl_h.DNNL_RUNTIME_OMP ? "OpenMP" : runtime == dnnl_h.DNNL_RUNTIME_SEQ ? "sequential"
            : runtime == dnnl_h.DNNL_RUNTIME_THREADPOOL ? "threadpool" : "CPU runtime " + runtime;
        return "oneDNN " + dnnl_h.dnnl_version_t.major(v) + "." + dnnl_h.dnnl_version_t.minor(v) + "." + dnnl_h.dnnl_version_t.patch(v)
            + " (" + DNNL.path().orElseThrow() + "), " + rt + ", " + DEFAULT_THREADS + " threads, graph API "
            + (hasGraphApi() ? "present (not used)" : "not in this build");
    }

    /**
     * Whether the loaded libdnnl exports the graph API (dnnl_graph_*, whose fused scaled-dot-product
     * attention issue 23 asks about). The one in org.bytedeco:dnnl:3.8.1-1.5.12 does not: it was
     * built without the graph component (its dnnl_graph.h declares 58 functions, the library exports none;
     * `nm -D libdnnl.so.3 | grep -c dnnl_graph` gives 0), so attention runs on our matmul path.
     */
    static boolean hasGraphApi() {
        return available() && DNNL.find("dnnl_graph_graph_create").isPresent();
    }
}
