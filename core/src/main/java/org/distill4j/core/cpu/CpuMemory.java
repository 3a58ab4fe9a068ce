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

    /** Allocations made through {@link #allocate} since the process started (never decreases: frees are not subtracted). */
    public static long allocations() {
        return ALLOCATIONS.get();
    }

    /** Bytes requested through {@link #allocate} since the process started (frees are not subtracted). */
    public static long allocatedBytes() {
        return BYTES.get();
    }
}
