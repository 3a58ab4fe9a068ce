package org.distill4j.bindings.kernels;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.cuda.CudaException;
import org.distill4j.bindings.cuda.cuda_h;

/**
 * Typed launchers for native/src/main/cuda/elementwise.cu. Buffers are float32 device buffers;
 * {@code n} counts elements. Launches are asynchronous on {@code stream}.
 */
public final class ElementwiseKernels {
    private static final int BLOCK = 256;
    private final MemorySegment fill;
    private final MemorySegment axpy;
    private final MemorySegment scale;
    private final int maxBlocks;

    /**
     * @param multiprocessors the device's SM count; grids are capped at 32 blocks per SM, and the
     *                        kernels' grid-stride loops cover any n
     */
    public ElementwiseKernels(KernelModule module, int multiprocessors) {
        this.fill = module.function("d4j_fill_f32");
        this.axpy = module.function("d4j_axpy_f32");
        this.scale = module.function("d4j_scale_f32");
        this.maxBlocks = Math.max(1, multiprocessors) * 32;
    }

    /** out[i] = value for i in [0, n). */
    public void fill(MemorySegment out, float value, long n, MemorySegment stream) {
        try (Arena a = Arena.ofConfined()) {
            launch(fill, "d4j_fill_f32", n, stream, new LaunchArgs(a, 3).pointer(out).f32(value).i64(n));
        }
    }

    /** y[i] = alpha * x[i] + y[i] for i in [0, n). */
    public void axpy(float alpha, MemorySegment x, MemorySegment y, long n, MemorySegment stream) {
        try (Arena a = Arena.ofConfined()) {
            launch(axpy, "d4j_axpy_f32", n, stream, new LaunchArgs(a, 4).f32(alpha).pointer(x).pointer(y).i64(n));
        }
    }

    /** x[i] = alpha * x[i] for i in [0, n). */
    public void scale(float alpha, MemorySegment x, long n, MemorySegment stream) {
        try (Arena a = Arena.ofConfined()) {
            launch(scale, "d4j_scale_f32", n, stream, new LaunchArgs(a, 3).f32(alpha).pointer(x).i64(n));
        }
    }

    private void launch(MemorySegment fn, String name, long n, MemorySegment stream, LaunchArgs args) {
        if (n < 0) throw new IllegalArgumentException(name + ": n must be >= 0, got " + n);
        if (n == 0) return;
        int grid = (int) Math.min(maxBlocks, (n + BLOCK - 1) / BLOCK);
        CudaException.check(cuda_h.cuLaunchKernel(fn, grid, 1, 1, BLOCK, 1, 1, 0, stream, args.segment(), MemorySegment.NULL),
            "cuLaunchKernel(" + name + ")");
    }
}
