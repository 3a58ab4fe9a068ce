package org.distill4j.bindings.kernels;

import static java.lang.foreign.ValueLayout.ADDRESS;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.cuda.CudaException;
import org.distill4j.bindings.cuda.cuda_h;
import org.distill4j.kernels.KernelImage;

/**
 * Distill4J's fatbin loaded into the calling thread's current CUDA context with cuModuleLoadData.
 * The driver picks the SASS that matches the GPU, or JIT-compiles the PTX for a newer one.
 */
public final class KernelModule implements AutoCloseable {
    private final MemorySegment module;
    private boolean closed;

    private KernelModule(MemorySegment module) {
        this.module = module;
    }

    /**
     * Loads the fatbin. Needs a current context (see the core module's CudaContext).
     *
     * @throws IllegalStateException when this build has no kernels (built without nvcc), saying why
     */
    public static KernelModule load() {
        byte[] image = KernelImage.fatbin().orElseThrow(() -> new IllegalStateException(
            "Distill4J's CUDA kernels were not built into this distribution: " + KernelImage.notBuiltReason()
                + ". Rebuild on a machine with nvcc (CUDA 13) to use the CUDA backend."));
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment img = arena.allocate(image.length, 16);
            MemorySegment.copy(image, 0, img, java.lang.foreign.ValueLayout.JAVA_BYTE, 0, image.length);
            MemorySegment out = arena.allocate(ADDRESS);
            CudaException.check(cuda_h.cuModuleLoadData(out, img), "cuModuleLoadData(distill4j.fatbin)");
            return new KernelModule(out.get(ADDRESS, 0));
        }
    }

    /** The CUfunction for an extern "C" kernel of the fatbin. */
    public MemorySegment function(String name) {
        if (closed) throw new IllegalStateException("kernel module already unloaded");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            CudaException.check(cuda_h.cuModuleGetFunction(out, module, arena.allocateFrom(name)), "cuModuleGetFunction(" + name + ")");
            return out.get(ADDRESS, 0);
        }
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        CudaException.check(cuda_h.cuModuleUnload(module), "cuModuleUnload");
    }
}
