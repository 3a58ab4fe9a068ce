package org.distill4j.bindings.kernels;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * The {@code void **kernelParams} array of cuLaunchKernel: one slot per kernel parameter, each
 * pointing at a copy of the value. Built in the caller's arena, valid until it closes.
 *
 * <p>One native allocation per launch: the slots and an 8-byte cell per value (every parameter
 * is at most 8 bytes: a pointer, float, int or long), {@code 16 x count} bytes in one block. The
 * driver copies the values during cuLaunchKernel (also while a stream is being captured into a
 * graph), which is why the launchers may close the arena as soon as the call returns. Still
 * allocated per launch: that block and the launcher's confined {@link Arena}. Reusing one block per
 * launcher (under a lock, since a backend may be called from several threads) would remove both;
 * not done without a GPU to run the graph-capture tests on.
 *
 * <p>Device buffers are zero-length segments bound to their allocation's arena. Writing an address
 * into memory does not check that arena, so {@link #pointer} checks it: a freed buffer throws here
 * instead of reaching the GPU.
 */
public final class LaunchArgs {
    private static final long CELL = 8;
    private final MemorySegment slots, values;
    private int next;

    public LaunchArgs(Arena arena, int count) {
        if (count < 0) throw new IllegalArgumentException("kernel parameter count must be >= 0, got " + count);
        long slotBytes = count * ADDRESS.byteSize();
        MemorySegment block = arena.allocate(Math.max(1, slotBytes + count * CELL), CELL);
        this.slots = block.asSlice(0, slotBytes);
        this.values = block.asSlice(slotBytes, count * CELL);
    }

    public LaunchArgs pointer(MemorySegment deviceBuffer) {
        if (!deviceBuffer.scope().isAlive()) {
            throw new IllegalStateException("kernel argument " + next + ": device buffer already freed (its arena is closed)");
        }
        cell().set(ADDRESS, 0, deviceBuffer);
        return filled();
    }

    /** A NULL device pointer (an optional output the kernel skips). */
    public LaunchArgs nullPointer() {
        cell().set(ADDRESS, 0, MemorySegment.NULL);
        return filled();
    }

    public LaunchArgs f32(float v) {
        cell().set(JAVA_FLOAT, 0, v);
        return filled();
    }

    public LaunchArgs i32(int v) {
        cell().set(JAVA_INT, 0, v);
        return filled();
    }

    public LaunchArgs i64(long v) {
        cell().set(JAVA_LONG, 0, v);
        return filled();
    }

    /** The next parameter's cell, which its slot points at; more parameters than declared throw. */
    private MemorySegment cell() {
        if (next >= values.byteSize() / CELL) throw new IllegalStateException("kernel takes " + values.byteSize() / CELL + " arguments; a further one given");
        MemorySegment c = values.asSlice(next * CELL, CELL);
        slots.setAtIndex(ADDRESS, next, c);
        return c;
    }

    private LaunchArgs filled() {
        next++;
        return this;
    }

    /** The array to pass as kernelParams; every slot must have been filled. */
    public MemorySegment segment() {
        if (next != slots.byteSize() / ADDRESS.byteSize()) {
            throw new IllegalStateException("kernel needs " + slots.byteSize() / ADDRESS.byteSize() + " arguments, " + next + " given");
        }
        return slots;
    }
}
