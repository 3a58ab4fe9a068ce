package org.distill4j.core.cuda;

/**
 * What the driver says about one GPU.
 *
 * @param totalMemoryBytes device memory in bytes
 * @param memoryPools      whether stream-ordered allocation (cuMemAllocAsync) is supported
 * @param maxSharedBytesPerBlockOptin dynamic + static shared memory one block may have after opting in (bytes)
 */
public record DeviceInfo(int ordinal, String name, int computeMajor, int computeMinor, int multiprocessors,
                         long totalMemoryBytes, boolean memoryPools, int maxSharedBytesPerBlockOptin) {
    @Override
    public String toString() {
        return String.format("GPU %d: %s, compute capability %d.%d, %d SMs, %.1f GiB", ordinal, name, computeMajor,
            computeMinor, multiprocessors, totalMemoryBytes / (1024.0 * 1024 * 1024));
    }
}
