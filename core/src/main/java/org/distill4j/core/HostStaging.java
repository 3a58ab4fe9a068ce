package org.distill4j.core;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A ring of host staging buffers for asynchronous copies to the device (page-locked on CUDA,
 * {@link Backend#allocateHost}): a slot is handed out again only once the copy that last read it
 * has completed, so the host never overwrites bytes a copy is still reading and waits for no more
 * than that copy. Used for per-step optimizer scalars and teacher-cache rows.
 */
public final class HostStaging implements AutoCloseable {
    private final Backend backend;
    private final Arena arena = Arena.ofShared();
    private final MemorySegment[] slots;
    private final Backend.Fence[] fences;
    private int next, current = -1;

    public HostStaging(Backend backend, int slots) {
        if (slots < 1) throw new IllegalArgumentException("HostStaging needs at least one slot, got " + slots);
        this.backend = backend;
        this.slots = new MemorySegment[slots];
        this.fences = new Backend.Fence[slots];
    }

    /** Host memory of {@code bytes} for the next copy; waits only for that slot's previous copy. */
    public MemorySegment take(long bytes) {
        int s = next;
        next = (next + 1) % slots.length;
        awaitSlot(s);
        if (slots[s] == null || slots[s].byteSize() < bytes) slots[s] = backend.allocateHost(arena, bytes);
        current = s;
        return slots[s].asSlice(0, bytes);
    }

    /** Starts copying {@code staged} (what {@link #take} just returned) into {@code dst}. */
    public void send(MemorySegment staged, Tensor dst) {
        if (current < 0) throw new IllegalStateException("HostStaging.send without take");
        fences[current] = backend.copyFromHostAsync(staged, dst);
        current = -1;
    }

    private void awaitSlot(int s) {
        if (fences[s] == null) return;
        fences[s].await();
        fences[s].close();
        fences[s] = null;
    }

    /** Waits for every copy in flight, then frees the buffers. */
    @Override
    public void close() {
        for (int s = 0; s < slots.length; s++) awaitSlot(s);
        arena.close();
    }
}
