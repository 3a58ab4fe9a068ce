package org.distill4j.core.cuda;

import java.lang.foreign.MemorySegment;

/**
 * A device allocation: a zero-length MemorySegment whose address is the CUdeviceptr and whose
 * scope is the Arena the buffer was allocated in, plus its size in bytes.
 *
 * <p>Zero length means Java code cannot read or write device memory by mistake (any access
 * throws). Bound to the arena means that once the arena closes (which frees the memory), passing
 * {@link #address()} to a downcall throws IllegalStateException instead of handing the GPU a
 * dangling pointer.
 */
@SuppressWarnings("restricted") // FFM: device and pinned pointers become arena-bound segments here
public record DeviceBuffer(MemorySegment address, long byteSize) {
    public DeviceBuffer {
        if (address.byteSize() != 0) throw new IllegalArgumentException("device buffers are zero-length segments");
        if (byteSize < 0) throw new IllegalArgumentException("byteSize must be >= 0, got " + byteSize);
    }

    /** Number of float32 elements this buffer holds. */
    public long floats() {
        return byteSize / Float.BYTES;
    }

    /** True until the owning arena closes. */
    public boolean isAlive() {
        return address.scope().isAlive();
    }

    /** A view of {@code bytes} bytes starting {@code offset} bytes in, sharing this buffer's lifetime. */
    public DeviceBuffer slice(long offset, long bytes) {
        if (offset < 0 || bytes < 0 || offset + bytes > byteSize) {
            throw new IndexOutOfBoundsException("slice [" + offset + ", " + (offset + bytes) + ") of a " + byteSize + "-byte buffer");
        }
        // reinterpret(size) keeps the scope, so the zero-length slice dies with the allocation.
        return new DeviceBuffer(address.reinterpret(offset + bytes).asSlice(offset, 0), bytes);
    }
}
