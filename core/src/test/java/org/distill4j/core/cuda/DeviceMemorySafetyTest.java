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
        }
    }
}
