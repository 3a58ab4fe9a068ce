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
 * <p>Device buffers are zero-length segments bound to their allocation's arena. Writing an address
 * into memory does not check that arena, so {@link #pointer} checks it: a freed buffer throws here
 * instead of reaching the GPU.
 */
public final class LaunchArgs {
    private final Arena arena;
    private final MemorySegment slots;
    private int next;

    public LaunchArgs(Arena arena, int count) {
        this.arena = arena;
        this.slots = arena.allocate(ADDRESS, count);
    }

    public LaunchArgs pointer(MemorySegment deviceBuffer) {
        if (!deviceBuffer.scope().isAlive()) {
            throw new IllegalStateException("kernel argument " + next + ": device buffer already freed (its arena is closed)");
        }
        return slot(arena.allocateFrom(ADDRESS, deviceBuffer));
    }

    /** A NULL device pointer (an optional output the kernel skips). */
    public LaunchArgs nullPointer() { return slot(arena.allocateFrom(ADDRESS, MemorySegment.NULL)); }

    public LaunchArgs f32(float v) { return slot(arena.allocateFrom(JAVA_FLOAT, v)); }

    public LaunchArgs i32(int v) { return slot(arena.allocateFrom(JAVA_INT, v)); }

    public LaunchArgs i64(long v) { return slot(arena.allocateFrom(JAVA_LONG, v)); }

    private LaunchArgs slot(MemorySegment value) {
        slots.setAtIndex(ADDRESS, next++, value);
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
