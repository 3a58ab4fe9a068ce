package org.distill4j.core.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.distill4j.bindings.cuda.CudaException.check;
import static org.distill4j.bindings.cuda.cuda_h.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibraryException;
import org.distill4j.bindings.cuda.CudaException;
import org.distill4j.core.BackendUnavailableException;

/**
 * One GPU's primary context and the stream Distill4J works on.
 *
 * <p>The primary context is the one the CUDA runtime (and so PyTorch) uses too, so buffers can be
 * shared with other CUDA code in the process. Every method makes the context current on the
 * calling thread first (cuCtxSetCurrent is a cheap thread-local store), so the context can be
 * used from any thread.
 *
 * <p>Allocation is stream-ordered (cuMemAllocAsync/cuMemFreeAsync) from the device's default
 * memory pool with its release threshold raised to "keep everything": after the first training
 * step, steady-state steps reuse pool memory and the driver allocates nothing new.
 */
@SuppressWarnings("restricted") // FFM: device and pinned pointers become arena-bound segments here
public final class CudaContext implements AutoCloseable {
    private final DeviceInfo device;
    private final int deviceHandle;
    private final MemorySegment context;
    private final MemorySegment stream;
    private final boolean streamOrdered;
    private volatile boolean closed;

    private CudaContext(DeviceInfo device, int deviceHandle, MemorySegment context, MemorySegment stream, boolean streamOrdered) {
        this.device = device;
        this.deviceHandle = deviceHandle;
        this.context = context;
        this.stream = stream;
        this.streamOrdered = streamOrdered;
    }

    /**
     * Opens GPU {@code ordinal}.
     *
     * @throws BackendUnavailableException when there is no usable GPU: the driver library is
     *         missing, cuInit fails (e.g. CUDA_ERROR_NO_DEVICE), or the ordinal does not exist.
     *         The message says which, in one line.
     */
    public static CudaContext open(int ordinal) {
        try {
            NativeLibraries.load(NativeLibraries.Library.CUDA_DRIVER);
        } catch (NativeLibraryException e) {
            throw new BackendUnavailableException("no GPU: " + e.getMessage(), e);
        }
        int count;
        try (Arena arena = Arena.ofConfined()) {
            int r = cuInit(0);
            if (r != CUDA_SUCCESS) {
                CudaException e = new CudaException("cuInit", r);
                throw new BackendUnavailableException("no GPU: " + e.getMessage(), e);
            }
            MemorySegment n = arena.allocate(JAVA_INT);
            check(cuDeviceGetCount(n), "cuDeviceGetCount");
            count = n.get(JAVA_INT, 0);
        }
        if (ordinal < 0 || ordinal >= count) {
            throw new BackendUnavailableException("no GPU " + ordinal + ": the driver reports " + count + " device(s)", null);
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment dev = arena.allocate(JAVA_INT);
            check(cuDeviceGet(dev, ordinal), "cuDeviceGet");
            int handle = dev.get(JAVA_INT, 0);
            DeviceInfo info = query(arena, ordinal, handle);
            MemorySegment ctx = arena.allocate(ADDRESS);
            check(cuDevicePrimaryCtxRetain(ctx, handle), "cuDevicePrimaryCtxRetain");
            MemorySegment context = ctx.get(ADDRESS, 0);
            check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
            MemorySegment s = arena.allocate(ADDRESS);
            check(cuStreamCreate(s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
            if (info.memoryPools()) keepPoolMemory(arena, handle);
            return new CudaContext(info, handle, context, s.get(ADDRESS, 0), info.memoryPools());
        }
    }

    /** Every GPU the driver reports; empty list when there is none. Throws like {@link #open}. */
    public static List<DeviceInfo> devices() {
        try {
            NativeLibraries.load(NativeLibraries.Library.CUDA_DRIVER);
        } catch (NativeLibraryException e) {
            throw new BackendUnavailableException("no GPU: " + e.getMessage(), e);
        }
        try (Arena arena = Arena.ofConfined()) {
            int r = cuInit(0);
            if (r != CUDA_SUCCESS) {
                CudaException e = new CudaException("cuInit", r);
                throw new BackendUnavailableException("no GPU: " + e.getMessage(), e);
            }
            MemorySegment n = arena.allocate(JAVA_INT);
            check(cuDeviceGetCount(n), "cuDeviceGetCount");
            List<DeviceInfo> out = new ArrayList<>();
            for (int i = 0; i < n.get(JAVA_INT, 0); i++) {
                MemorySegment dev = arena.allocate(JAVA_INT);
                check(cuDeviceGet(dev, i), "cuDeviceGet");
                out.add(query(arena, i, dev.get(JAVA_INT, 0)));
            }
            return out;
        }
    }

    /** The driver's CUDA version as cuDriverGetVersion reports it, e.g. 13000 for 13.0. */
    public static int driverVersion() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(JAVA_INT);
            check(cuDriverGetVersion(v), "cuDriverGetVersion");
            return v.get(JAVA_INT, 0);
        }
    }

    private static DeviceInfo query(Arena arena, int ordinal, int handle) {
        MemorySegment name = arena.allocate(256);
        check(cuDeviceGetName(name, 256, handle), "cuDeviceGetName");
        MemorySegment mem = arena.allocate(JAVA_LONG);
        check(cuDeviceTotalMem_v2(mem, handle), "cuDeviceTotalMem");
        return new DeviceInfo(ordinal, name.getString(0),
            attribute(arena, handle, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            attribute(arena, handle, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
            attribute(arena, handle, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
            mem.get(JAVA_LONG, 0),
            attribute(arena, handle, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED) != 0,
            attribute(arena, handle, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN));
    }

    private static int attribute(Arena arena, int handle, int attribute) {
        MemorySegment v = arena.allocate(JAVA_INT);
        check(cuDeviceGetAttribute(v, attribute, handle), "cuDeviceGetAttribute(" + attribute + ")");
        return v.get(JAVA_INT, 0);
    }

    /** Raise the default pool's release threshold so freed memory stays cached for the next step. */
    private static void keepPoolMemory(Arena arena, int handle) {
        MemorySegment pool = arena.allocate(ADDRESS);
        check(cuDeviceGetDefaultMemPool(pool, handle), "cuDeviceGetDefaultMemPool");
        MemorySegment threshold = arena.allocateFrom(JAVA_LONG, -1L); // UINT64_MAX: never release
        check(cuMemPoolSetAttribute(pool.get(ADDRESS, 0), CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, threshold),
            "cuMemPoolSetAttribute(RELEASE_THRESHOLD)");
    }

    public DeviceInfo device() { return device; }

    /** The CUstream all of this context's work is ordered on. */
    public MemorySegment stream() { return stream; }

    /** Whether {@link #stream()} is capturing a graph now (cuStreamIsCapturing): allocations made now would belong to the graph. */
    public boolean capturing() {
        makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment status = arena.allocate(JAVA_INT);
            check(cuStreamIsCapturing(stream, status), "cuStreamIsCapturing");
            return status.get(JAVA_INT, 0) != CU_STREAM_CAPTURE_STATUS_NONE;
        }
    }

    /** Makes this context current on the calling thread. */
    public void makeCurrent() {
        if (closed) throw new IllegalStateException("CUDA context for " + device.name() + " is closed");
        check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
    }

    /**
     * Allocates {@code bytes} of device memory that lives until {@code arena} closes. With memory
     * pools the allocation and the free are ordered on {@link #stream()}; otherwise they are
     * synchronous cuMemAlloc/cuMemFree.
     */
    public DeviceBuffer allocate(Arena arena, long bytes) {
        if (bytes <= 0) throw new IllegalArgumentException("device allocation of " + bytes + " bytes: size must be > 0");
        makeCurrent();
        long ptr;
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(JAVA_LONG);
            int r = streamOrdered ? cuMemAllocAsync(out, bytes, stream) : cuMemAlloc_v2(out, bytes);
            if (r == CUDA_ERROR_OUT_OF_MEMORY) {
                long[] mem = memoryInfo();
                throw new DeviceOutOfMemoryException(device, bytes, mem[0], mem[1]);
            }
            check(r, (streamOrdered ? "cuMemAllocAsync(" : "cuMemAlloc(") + bytes + " bytes)");
            ptr = out.get(JAVA_LONG, 0);
        }
        // The cleanup runs when the arena closes, on the closing thread: make the context current
        // there, and free on our stream so the free is ordered after the work that used the buffer.
        MemorySegment address = MemorySegment.ofAddress(ptr).reinterpret(0, arena, seg -> free(seg.address()));
        return new DeviceBuffer(address, bytes);
    }

    private void free(long ptr) {
        if (closed) return; // the context's teardown released everything
        check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
        MemorySegment p = MemorySegment.ofAddress(ptr);
        if (streamOrdered) check(cuMemFreeAsync(p, stream), "cuMemFreeAsync");
        else check(cuMemFree_v2(p), "cuMemFree");
    }

    /**
     * Allocates page-locked host memory (cuMemHostAlloc) that lives until {@code arena} closes. The
     * segment is ordinary readable host memory; copies from it run at full PCIe/NVLink speed and
     * can be asynchronous.
     */
    public MemorySegment allocatePinned(Arena arena, long bytes) {
        if (bytes <= 0) throw new IllegalArgumentException("pinned allocation of " + bytes + " bytes: size must be > 0");
        makeCurrent();
        MemorySegment ptr;
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(ADDRESS);
            check(cuMemHostAlloc(out, bytes, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc(" + bytes + " bytes)");
            ptr = out.get(ADDRESS, 0);
        }
        return ptr.reinterpret(bytes, arena, seg -> {
            if (!closed) check(cuMemFreeHost(MemorySegment.ofAddress(seg.address())), "cuMemFreeHost");
        });
    }

    /** Copies host → device and waits for the copy (and everything before it on the stream). */
    public void copyToDevice(DeviceBuffer dst, long dstOffset, MemorySegment src) {
        copyToDeviceAsync(dst, dstOffset, src);
        synchronize();
    }

    /** Copies device → host and waits: the only way to read results, and a synchronisation point. */
    public void copyToHost(MemorySegment dst, DeviceBuffer src, long srcOffset) {
        copyToHostAsync(dst, src, srcOffset);
        synchronize();
    }

    /** Enqueues a host → device copy on the stream. {@code src} must stay alive until the stream reaches it (pinned for overlap). */
    public void copyToDeviceAsync(DeviceBuffer dst, long dstOffset, MemorySegment src) {
        long n = src.byteSize();
        bounds(dst, dstOffset, n, "copyToDevice");
        makeCurrent();
        check(cuMemcpyHtoDAsync_v2(dst.slice(dstOffset, n).address(), src, n, stream), "cuMemcpyHtoDAsync");
    }

    /** Enqueues a device → host copy on the stream; {@code dst} holds the data after {@link #synchronize()}. */
    public void copyToHostAsync(MemorySegment dst, DeviceBuffer src, long srcOffset) {
        long n = dst.byteSize();
        bounds(src, srcOffset, n, "copyToHost");
        makeCurrent();
        check(cuMemcpyDtoHAsync_v2(dst, src.slice(srcOffset, n).address(), n, stream), "cuMemcpyDtoHAsync");
    }

    /** Enqueues a device → device copy of {@code bytes} bytes. */
    public void copy(DeviceBuffer dst, long dstOffset, DeviceBuffer src, long srcOffset, long bytes) {
        bounds(dst, dstOffset, bytes, "copy destination");
        bounds(src, srcOffset, bytes, "copy source");
        makeCurrent();
        check(cuMemcpyDtoDAsync_v2(dst.slice(dstOffset, bytes).address(), src.slice(srcOffset, bytes).address(), bytes, stream),
            "cuMemcpyDtoDAsync");
    }

    /** Enqueues setting every byte of {@code dst} to zero. */
    public void zero(DeviceBuffer dst) {
        makeCurrent();
        check(cuMemsetD8Async(dst.address(), (byte) 0, dst.byteSize(), stream), "cuMemsetD8Async");
    }

    private static void bounds(DeviceBuffer b, long offset, long n, String what) {
        if (offset < 0 || n < 0 || offset + n > b.byteSize()) {
            throw new IndexOutOfBoundsException(what + ": bytes [" + offset + ", " + (offset + n) + ") of a " + b.byteSize() + "-byte device buffer");
        }
    }

    /** Waits until everything enqueued on the stream has run; surfaces asynchronous errors. */
    public void synchronize() {
        makeCurrent();
        check(cuStreamSynchronize(stream), "cuStreamSynchronize");
    }

    /** Bytes of device memory free and in total, as the driver sees them. */
    public long[] memoryInfo() {
        makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment free = arena.allocate(JAVA_LONG);
            MemorySegment total = arena.allocate(JAVA_LONG);
            check(cuMemGetInfo_v2(free, total), "cuMemGetInfo");
            return new long[] {free.get(JAVA_LONG, 0), total.get(JAVA_LONG, 0)};
        }
    }

    /** An event recorded on the stream now: awaiting it waits for everything enqueued so far. */
    public org.distill4j.core.Backend.Fence recordEvent() {
        makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment e = arena.allocate(ADDRESS);
            check(cuEventCreate(e, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
            MemorySegment event = e.get(ADDRESS, 0);
            check(cuEventRecord(event, stream), "cuEventRecord");
            return new org.distill4j.core.Backend.Fence() {
                private boolean destroyed;

                @Override
                public void await() {
                    check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
                    check(cuEventSynchronize(event), "cuEventSynchronize");
                }

                @Override
                public synchronized void close() {
                    if (destroyed || closed) return;
                    destroyed = true;
                    check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
                    check(cuEventDestroy_v2(event), "cuEventDestroy");
                }
            };
        }
    }

    /**
     * Milliseconds of GPU time that {@code iterations} runs of {@code work} take on this context's
     * stream, measured with CUDA events (so host overhead between launches is not counted unless
     * the GPU waits for it). Synchronises.
     */
    public float timeMillis(int iterations, Runnable work) {
        makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment e0 = arena.allocate(ADDRESS), e1 = arena.allocate(ADDRESS);
            check(cuEventCreate(e0, CU_EVENT_DEFAULT), "cuEventCreate");
            check(cuEventCreate(e1, CU_EVENT_DEFAULT), "cuEventCreate");
            MemorySegment start = e0.get(ADDRESS, 0), stop = e1.get(ADDRESS, 0);
            try {
                check(cuEventRecord(start, stream), "cuEventRecord");
                for (int i = 0; i < iterations; i++) work.run();
                check(cuEventRecord(stop, stream), "cuEventRecord");
                check(cuEventSynchronize(stop), "cuEventSynchronize");
                MemorySegment ms = arena.allocate(java.lang.foreign.ValueLayout.JAVA_FLOAT);
                check(cuEventElapsedTime_v2(ms, start, stop), "cuEventElapsedTime");
                return ms.get(java.lang.foreign.ValueLayout.JAVA_FLOAT, 0);
            } finally {
                cuEventDestroy_v2(start);
                cuEventDestroy_v2(stop);
            }
        }
    }

    /** Bytes of device memory the default pool has handed out and not had back (0 without pools). */
    public long poolBytesInUse() {
        return poolAttribute(CU_MEMPOOL_ATTR_USED_MEM_CURRENT);
    }

    /** The most bytes ever taken from the pool at once since it was created (the peak of {@link #poolBytesInUse()}). */
    public long poolBytesPeak() {
        return poolAttribute(CU_MEMPOOL_ATTR_USED_MEM_HIGH);
    }

    private long poolAttribute(int attribute) {
        if (!streamOrdered) return 0;
        makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment pool = arena.allocate(ADDRESS);
            check(cuDeviceGetDefaultMemPool(pool, deviceHandle), "cuDeviceGetDefaultMemPool");
            MemorySegment v = arena.allocate(JAVA_LONG);
            check(cuMemPoolGetAttribute(pool.get(ADDRESS, 0), attribute, v), "cuMemPoolGetAttribute");
            return v.get(JAVA_LONG, 0);
        }
    }

    /** Reads a device buffer's bytes into a new host array (synchronising). For tests and tools. */
    public float[] readFloats(DeviceBuffer src) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate(src.byteSize(), 16);
            copyToHost(host, src, 0);
            return host.toArray(java.lang.foreign.ValueLayout.JAVA_FLOAT);
        }
    }

    /** Writes {@code values} into a device buffer (synchronising). For tests and tools. */
    public void writeFloats(DeviceBuffer dst, float[] values) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocateFrom(java.lang.foreign.ValueLayout.JAVA_FLOAT, values);
            copyToDevice(dst, 0, host);
        }
    }

    @Override
    public void close() {
        if (closed) return;
        makeCurrent();
        check(cuStreamSynchronize(stream), "cuStreamSynchronize");
        check(cuStreamDestroy_v2(stream), "cuStreamDestroy");
        closed = true;
        check(cuDevicePrimaryCtxRelease_v2(deviceHandle), "cuDevicePrimaryCtxRelease");
    }

}
