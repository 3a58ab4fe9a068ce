package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;

/** CpuMemory's block cache for empty tensors: blocks come back when their arena closes, are reused by size, and can be freed. */
class CpuMemoryTest {
    @Test
    void largeBlocksAreReusedBySizeAndSmallOnesAreTheJdks() {
        if (CpuMemory.CACHE_BYTES <= 0) return; // cache switched off: allocateUninitialized is allocate
        CpuMemory.releaseCache();
        assertEquals(0, CpuMemory.cachedBytes());
        long bytes = (3L << 20) + 12; // rounds up to whole pages
        long block = ((bytes + 4095) / 4096) * 4096;
        long first, second;
        try (Arena a = Arena.ofShared()) {
            MemorySegment s = CpuMemory.allocateUninitialized(a, bytes, 64);
            MemorySegment t = CpuMemory.allocateUninitialized(a, bytes, 64);
            assertEquals(bytes, s.byteSize());
            assertEquals(0, s.address() % 4096, "page-aligned");
            s.set(ValueLayout.JAVA_FLOAT, bytes - 16, 1.5f); // the whole extent is usable
            t.set(ValueLayout.JAVA_BYTE, 0, (byte) 7);
            first = s.address();
            second = t.address();
            assertTrue(first != second);
        }
        assertEquals(2 * block, CpuMemory.cachedBytes(), "both blocks went to the cache when the arena closed");
        try (Arena a = Arena.ofConfined()) {
            MemorySegment u = CpuMemory.allocateUninitialized(a, bytes, 64);
            assertTrue(u.address() == first || u.address() == second, "a cached block of the size is reused");
            assertEquals(block, CpuMemory.cachedBytes());
            MemorySegment other = CpuMemory.allocateUninitialized(a, bytes + 8192, 64); // another size: a new block
            assertTrue(other.address() != first && other.address() != second);
            MemorySegment small = CpuMemory.allocateUninitialized(a, 1000, 64); // below 1 MiB: the JDK's zero-filled memory
            for (long i = 0; i < 1000; i++) assertEquals(0, small.get(ValueLayout.JAVA_BYTE, i));
        }
        assertEquals(2 * block + block + 8192, CpuMemory.cachedBytes());
        CpuMemory.releaseCache();
        assertEquals(0, CpuMemory.cachedBytes());
    }
}
