package org.distill4j.core.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.blas.cblas_h;
import org.distill4j.bindings.kernels.LaunchArgs;
import org.junit.jupiter.api.Test;

/**
 * The device-pointer discipline without a GPU: a buffer is a zero-length segment bound to its
 * arena, so once the arena is closed any downcall that is handed it throws before the call.
 * (OpenBLAS stands in for the GPU libraries: the check is the FFM linker's, the same for all.)
 */
@SuppressWarnings("restricted") // builds fake device pointers the way CudaContext.allocate does
class DeviceMemorySafetyTest {
    private static DeviceBuffer fakeDeviceBuffer(Arena arena, long address, long bytes) {
        return new DeviceBuffer(MemorySegment.ofAddress(address).reinterpret(0, arena, null), bytes);
    }

    @Test
    void aFreedBufferPassedToADowncallThrowsInsteadOfReachingNativeCode() {
        Arena arena = Arena.ofConfined();
        DeviceBuffer buf = fakeDeviceBuffer(arena, 0x7f0000001000L, 64);
        assertTrue(buf.isAlive());
        arena.close();
        assertFalse(buf.isAlive());
        // n = 0: were the segment accepted, OpenBLAS would not touch it; the throw proves the check happens first.
        assertThrows(IllegalStateException.class, () -> cblas_h.cblas_sscal(0, 1f, buf.address(), 1));
    }

    @Test
    void javaCannotDereferenceDeviceMemory() {
        try (Arena arena = Arena.ofConfined()) {
            DeviceBuffer buf = fakeDeviceBuffer(arena, 0x7f0000001000L, 64);
            assertEquals(0, buf.address().byteSize());
            assertThrows(IndexOutOfBoundsException.class, () -> buf.address().get(java.lang.foreign.ValueLayout.JAVA_FLOAT, 0));
        }
    }

    @Test
    void slicesShareTheAllocationsLifetimeAndCheckBounds() {
        Arena arena = Arena.ofConfined();
        DeviceBuffer buf = fakeDeviceBuffer(arena, 0x7f0000001000L, 64);
        DeviceBuffer slice = buf.slice(16, 32);
        assertEquals(0x7f0000001010L, slice.address().address());
        assertEquals(32, slice.byteSize());
        assertThrows(IndexOutOfBoundsException.class, () -> buf.slice(48, 32));
        arena.close();
        assertFalse(slice.isAlive());
    }

    @Test
    void kernelArgumentsRefuseFreedBuffers() {
        Arena owner = Arena.ofConfined();
        DeviceBuffer buf = fakeDeviceBuffer(owner, 0x7f0000001000L, 64);
        owner.close();
        try (Arena args = Arena.ofConfined()) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> new LaunchArgs(args, 1).pointer(buf.address()));
            assertTrue(e.getMessage().contains("already freed"), e.getMessage());
        }
    }

    @Test
    void launchArgsNeedEverySlot() {
        try (Arena args = Arena.ofConfined()) {
            LaunchArgs a = new LaunchArgs(args, 2).f32(1f);
            assertThrows(IllegalStateException.class, a::segment);
            assertEquals(16, a.i64(3).segment().byteSize());
            assertThrows(IllegalStateException.class, () -> a.f32(2f), "a third argument for two slots");
        }
    }

    /** What cuLaunchKernel reads: slot i holds the address of an 8-byte cell with value i, all in one allocation. */
    @Test
    void launchArgsSlotsPointAtTheirValues() {
        try (Arena args = Arena.ofConfined(); Arena owner = Arena.ofConfined()) {
            DeviceBuffer buf = fakeDeviceBuffer(owner, 0x7f0000001000L, 64);
            MemorySegment slots = new LaunchArgs(args, 5).pointer(buf.address()).nullPointer().f32(1.5f).i32(-7).i64(1L << 40).segment();
            assertEquals(5 * 8, slots.byteSize());
            MemorySegment[] cells = new MemorySegment[5];
            for (int i = 0; i < 5; i++) cells[i] = slots.getAtIndex(java.lang.foreign.ValueLayout.ADDRESS, i).reinterpret(8);
            for (int i = 1; i < 5; i++) assertEquals(cells[i - 1].address() + 8, cells[i].address(), "cell " + i + " follows cell " + (i - 1));
            assertEquals(slots.address() + slots.byteSize(), cells[0].address(), "the cells follow the slots");
            assertEquals(0x7f0000001000L, cells[0].get(java.lang.foreign.ValueLayout.JAVA_LONG, 0));
            assertEquals(0L, cells[1].get(java.lang.foreign.ValueLayout.JAVA_LONG, 0));
            assertEquals(1.5f, cells[2].get(java.lang.foreign.ValueLayout.JAVA_FLOAT, 0));
            assertEquals(-7, cells[3].get(java.lang.foreign.ValueLayout.JAVA_INT, 0));
            assertEquals(1L << 40, cells[4].get(java.lang.foreign.ValueLayout.JAVA_LONG, 0));
        }
    }
}
