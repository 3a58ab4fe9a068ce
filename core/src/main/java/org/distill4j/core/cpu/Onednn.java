package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
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
 * own parallel loops), before it looks its primitive up; a primitive's key includes the count,
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
        int threads = CpuBlas.singleThreadedHeld() ? 1 : DEFAULT_THREADS;
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
            + " (" + DNNL.path().orElseThrow() + "), " + rt + ", " + DEFAULT_THREADS + " threads";
    }
}
