package org.distill4j.core.cpu;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The native allocations of the CPU side, counted: every segment the CPU backend allocates
 * ({@code empty}, {@code allocateHost}, the convolutions' im2col scratch, the fast loss's per-block
 * flags) and every {@link org.distill4j.core.nn.InferencePlan.Workspace} buffer comes from
 * {@link #allocate}, so tests can check that steady-state work allocates nothing natively by
 * reading {@link #allocations()} before and after. Process-wide, across threads.
 *
 * <p>Not counted: memory that native libraries allocate themselves (OpenBLAS's per-thread buffers,
 * made once per OS thread; the fast loss kernel's row scratch, {@code malloc}ed per call in C), and
 * other modules' arenas (data loading, safetensors I/O, the trainer's staging).
 */
@SuppressWarnings("restricted") // FFM: libc's posix_memalign blocks bound to the caller's arena (reinterpret)
public final class CpuMemory {
    private static final AtomicLong ALLOCATIONS = new AtomicLong(), BYTES = new AtomicLong();

    private CpuMemory() {}

    /** {@code arena.allocate(max(1, bytes), alignment)} sliced to {@code bytes}, counted. */
    public static MemorySegment allocate(Arena arena, long bytes, long alignment) {
        MemorySegment s = arena.allocate(Math.max(1, bytes), alignment).asSlice(0, bytes);
        ALLOCATIONS.incrementAndGet();
        BYTES.addAndGet(bytes);
        return s;
    }

    /**
     * As {@link #allocate}, but the contents are undefined: the CPU backend's {@code empty} tensors,
     * whose contract is "contents undefined" (as cuMemAlloc's). From {@link #UNINITIALIZED_FROM}
     * bytes up the memory comes from a cache of blocks this class keeps, refilled by libc's
     * {@code posix_memalign} when it has none of the size, and a block goes back to the cache (or to
     * {@code free}, once the cache holds {@link #CACHE_BYTES}) when its arena closes.
     *
     * <p>Why: a training step allocates the same activation sizes every step, and
     * {@code Arena.allocate} both zero-fills every byte and, above glibc's mmap threshold (32 MiB at
     * most), maps fresh pages each time, so every step paid a page fault per 4 KiB of activations
     * plus the fill: a fifth of the CNN pair's Java time in JFR, and that pair's kd-step went from
     * 430-460 to 690-770 samples/s with the blocks reused (bench/RESULTS.md, 2026-12-06). Below 1
     * MiB the zero-fill is cheaper than the bookkeeping. Blocks are cached by exact size (rounded up
     * to 4 KiB), page-aligned; {@link #releaseCache()} frees the cached ones.
     */
    public static MemorySegment allocateUninitialized(Arena arena, long bytes, long alignment) {
        if (bytes < UNINITIALIZED_FROM || POSIX_MEMALIGN == null || CACHE_BYTES <= 0 || alignment > PAGE || Long.bitCount(alignment) != 1) {
            return allocate(arena, bytes, alignment);
        }
        long size = (bytes + PAGE - 1) & -PAGE;
        java.util.concurrent.ConcurrentLinkedQueue<Long> free = CACHE.get(size);
        Long cached = free == null ? null : free.poll();
        long address;
        if (cached != null) {
            CACHED.addAndGet(-size);
            address = cached;
        } else {
            address = posixMemalign(size);
        }
        MemorySegment s = MemorySegment.ofAddress(address).reinterpret(bytes, arena, seg -> release(seg.address(), size));
        ALLOCATIONS.incrementAndGet();
        BYTES.addAndGet(bytes);
        return s;
    }

    /** Frees every cached block (blocks in use go back to the cache, or to free, when their arenas close). */
    public static void releaseCache() {
        for (var e : CACHE.entrySet()) {
            for (Long a; (a = e.getValue().poll()) != null; ) {
                CACHED.addAndGet(-e.getKey());
                freeBlock(a);
            }
        }
    }

    /** Bytes in cached blocks now (for tests and reports). */
    public static long cachedBytes() {
        return CACHED.get();
    }

    /** Bytes from which {@link #allocateUninitialized} uses the block cache (1 MiB). */
    static final long UNINITIALIZED_FROM = 1L << 20;
    private static final long PAGE = 4096;
    /** Most bytes the cache keeps (-Ddistill4j.cpu.cacheBytes, default 1 GiB; 0: no cache, every empty tensor zero-filled by the JDK). */
    static final long CACHE_BYTES = Long.getLong("distill4j.cpu.cacheBytes", 1L << 30);
    private static final java.util.concurrent.ConcurrentHashMap<Long, java.util.concurrent.ConcurrentLinkedQueue<Long>> CACHE = new java.util.concurrent.ConcurrentHashMap<>();
    private static final AtomicLong CACHED = new AtomicLong();

    // libc's, through the bindings' lookup; null where it has no posix_memalign (then every allocation is the JDK's).
    private static final java.lang.invoke.MethodHandle POSIX_MEMALIGN, FREE;

    static {
        java.lang.invoke.MethodHandle memalign = null, free = null;
        try {
            memalign = org.distill4j.bindings.NativeLibrary.libc("posix_memalign", java.lang.foreign.FunctionDescriptor.of(java.lang.foreign.ValueLayout.JAVA_INT,
                java.lang.foreign.ValueLayout.ADDRESS, java.lang.foreign.ValueLayout.JAVA_LONG, java.lang.foreign.ValueLayout.JAVA_LONG));
            free = org.distill4j.bindings.NativeLibrary.libc("free", java.lang.foreign.FunctionDescriptor.ofVoid(java.lang.foreign.ValueLayout.JAVA_LONG));
        } catch (UnsatisfiedLinkError e) {
            memalign = free = null; // no block cache: allocateUninitialized falls back to the JDK's allocation
        }
        POSIX_MEMALIGN = memalign;
        FREE = free;
    }

    /** A block back from a closed arena: cached while the cache has room, else freed. */
    private static void release(long address, long size) {
        if (CACHED.addAndGet(size) <= CACHE_BYTES) {
            CACHE.computeIfAbsent(size, k -> new java.util.concurrent.ConcurrentLinkedQueue<>()).add(address);
        } else {
            CACHED.addAndGet(-size);
            freeBlock(address);
        }
    }

    private static long posixMemalign(long size) {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(java.lang.foreign.ValueLayout.JAVA_LONG);
            int rc = (int) POSIX_MEMALIGN.invokeExact(out, PAGE, size);
            if (rc != 0) throw new OutOfMemoryError("posix_memalign(" + PAGE + ", " + size + ") failed: error " + rc);
            return out.get(java.lang.foreign.ValueLayout.JAVA_LONG, 0);
        } catch (Throwable t) {
            throw org.distill4j.bindings.Downcalls.rethrow("posix_memalign", t);
        }
    }

    private static void freeBlock(long address) {
        try {
            FREE.invokeExact(address);
        } catch (Throwable t) {
            throw org.distill4j.bindings.Downcalls.rethrow("free", t);
        }
    }

    /** Allocations made through {@link #allocate} since the process started (never decreases: frees are not subtracted). */
    public static long allocations() {
        return ALLOCATIONS.get();
    }

    /** Bytes requested through {@link #allocate} since the process started (frees are not subtracted). */
    public static long allocatedBytes() {
        return BYTES.get();
    }
}
