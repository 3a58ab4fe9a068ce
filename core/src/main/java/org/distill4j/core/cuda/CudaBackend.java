package org.distill4j.core.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibraryException;
import org.distill4j.bindings.cublas.CublasException;
import org.distill4j.bindings.cublas.cublas_h;
import org.distill4j.bindings.cudnn.CudnnException;
import org.distill4j.bindings.cudnn.cudnn_h;
import org.distill4j.bindings.kernels.ElementwiseKernels;
import org.distill4j.bindings.kernels.KernelModule;
import org.distill4j.core.BackendUnavailableException;

/**
 * The CUDA backend: one GPU's context and stream, a cuBLAS handle, a cuDNN handle and our kernels,
 * all ordered on the context's stream. Ops enqueue work and return; only reads synchronise.
 *
 * <p>This class holds the device plumbing every op needs (the foundation); the full op set of
 * the Backend interface builds on it.
 */
public final class CudaBackend implements AutoCloseable {
    /** cuBLAS math: TF32 tensor cores (default on sm_80+, as PyTorch's allow_tf32) or strict FP32. */
    public enum MathMode { TF32, STRICT_FP32 }

    private final CudaContext context;
    private final MemorySegment cublas;
    private final MemorySegment cudnn;
    private final KernelModule module;
    private final ElementwiseKernels elementwise;
    private MathMode mathMode;

    private CudaBackend(CudaContext context, MemorySegment cublas, MemorySegment cudnn, KernelModule module) {
        this.context = context;
        this.cublas = cublas;
        this.cudnn = cudnn;
        this.module = module;
        this.elementwise = new ElementwiseKernels(module, context.device().multiprocessors());
    }

    /**
     * Opens the CUDA backend on GPU {@code ordinal}.
     *
     * @throws BackendUnavailableException in one line when anything it needs is missing: the driver
     *         or a GPU ("no GPU: ..."), cuBLAS or cuDNN (naming every place searched), or our kernels
     *         (this build was made without nvcc). Never a JVM crash.
     */
    public static CudaBackend create(int ordinal) {
        if (!org.distill4j.kernels.KernelImage.built()) {
            throw new BackendUnavailableException("CUDA backend unavailable: Distill4J's kernels were not built ("
                + org.distill4j.kernels.KernelImage.notBuiltReason() + ")", null);
        }
        CudaContext context = CudaContext.open(ordinal);
        try {
            NativeLibraries.load(NativeLibraries.Library.CUBLAS);
            NativeLibraries.load(NativeLibraries.Library.CUDNN);
        } catch (NativeLibraryException e) {
            context.close();
            throw new BackendUnavailableException("CUDA backend unavailable: " + e.getMessage(), e);
        }
        try (Arena arena = Arena.ofConfined()) {
            context.makeCurrent();
            MemorySegment h = arena.allocate(ADDRESS);
            CublasException.check(cublas_h.cublasCreate_v2(h), "cublasCreate");
            MemorySegment cublas = h.get(ADDRESS, 0);
            CublasException.check(cublas_h.cublasSetStream_v2(cublas, context.stream()), "cublasSetStream");
            MemorySegment d = arena.allocate(ADDRESS);
            CudnnException.check(cudnn_h.cudnnCreate(d), "cudnnCreate");
            MemorySegment cudnn = d.get(ADDRESS, 0);
            CudnnException.check(cudnn_h.cudnnSetStream(cudnn, context.stream()), "cudnnSetStream");
            CudaBackend b = new CudaBackend(context, cublas, cudnn, KernelModule.load());
            b.setMathMode(context.device().computeMajor() >= 8 ? MathMode.TF32 : MathMode.STRICT_FP32);
            return b;
        } catch (RuntimeException e) {
            context.close();
            throw e;
        }
    }

    public CudaContext context() { return context; }

    public ElementwiseKernels elementwise() { return elementwise; }

    public MathMode mathMode() { return mathMode; }

    /** Selects TF32 tensor-op math or strict FP32 for cuBLAS and cuDNN. */
    public void setMathMode(MathMode mode) {
        context.makeCurrent();
        CublasException.check(cublas_h.cublasSetMathMode(cublas, mode == MathMode.TF32 ? cublas_h.CUBLAS_TF32_TENSOR_OP_MATH : cublas_h.CUBLAS_PEDANTIC_MATH),
            "cublasSetMathMode");
        this.mathMode = mode;
    }

    /**
     * Row-major C[m,n] = alpha * op(A) op(B) + beta * C, with op(A) [m,k] and op(B) [k,n], leading
     * dimensions in elements (row-major: the row length of the stored matrix).
     *
     * <p>cuBLAS is column-major; a row-major matrix is its transpose in column-major, so we ask
     * cuBLAS for C^T = op(B)^T op(A)^T, which swaps the operands and m/n and needs no copy.
     */
    public void sgemm(boolean transA, boolean transB, int m, int n, int k, float alpha, DeviceBuffer a, int lda,
                      DeviceBuffer b, int ldb, float beta, DeviceBuffer c, int ldc) {
        context.makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            CublasException.check(cublas_h.cublasSgemm_v2(cublas,
                transB ? cublas_h.CUBLAS_OP_T : cublas_h.CUBLAS_OP_N, transA ? cublas_h.CUBLAS_OP_T : cublas_h.CUBLAS_OP_N,
                n, m, k, arena.allocateFrom(JAVA_FLOAT, alpha), b.address(), ldb, a.address(), lda,
                arena.allocateFrom(JAVA_FLOAT, beta), c.address(), ldc), "cublasSgemm");
        }
    }

    /**
     * NCHW float32 convolution (cross-correlation, as PyTorch's Conv2d): y[n,k,oh,ow] from x[n,c,h,w]
     * and w[k,c,r,s], zero padding and stride per axis, no bias. cuDNN picks the algorithm by its
     * heuristics (the first that succeeds); its workspace is allocated for the call.
     *
     * @return the output height and width
     */
    public int[] conv2dForward(DeviceBuffer x, int n, int c, int h, int w, DeviceBuffer weight, int k, int r, int s,
                               int padH, int padW, int strideH, int strideW, DeviceBuffer y) {
        context.makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment xd = tensor4d(arena, n, c, h, w);
            MemorySegment wd = out(arena, "cudnnCreateFilterDescriptor", p -> cudnn_h.cudnnCreateFilterDescriptor(p));
            MemorySegment cd = out(arena, "cudnnCreateConvolutionDescriptor", p -> cudnn_h.cudnnCreateConvolutionDescriptor(p));
            MemorySegment yd = null;
            try {
                CudnnException.check(cudnn_h.cudnnSetFilter4dDescriptor(wd, cudnn_h.CUDNN_DATA_FLOAT, cudnn_h.CUDNN_TENSOR_NCHW, k, c, r, s), "cudnnSetFilter4dDescriptor");
                CudnnException.check(cudnn_h.cudnnSetConvolution2dDescriptor(cd, padH, padW, strideH, strideW, 1, 1,
                    cudnn_h.CUDNN_CROSS_CORRELATION, cudnn_h.CUDNN_DATA_FLOAT), "cudnnSetConvolution2dDescriptor");
                CudnnException.check(cudnn_h.cudnnSetConvolutionMathType(cd, mathMode == MathMode.TF32 ? cudnn_h.CUDNN_TENSOR_OP_MATH : cudnn_h.CUDNN_FMA_MATH),
                    "cudnnSetConvolutionMathType");
                MemorySegment dims = arena.allocate(JAVA_INT, 4);
                CudnnException.check(cudnn_h.cudnnGetConvolution2dForwardOutputDim(cd, xd, wd, dims, dims.asSlice(4), dims.asSlice(8), dims.asSlice(12)),
                    "cudnnGetConvolution2dForwardOutputDim");
                int oh = dims.getAtIndex(JAVA_INT, 2), ow = dims.getAtIndex(JAVA_INT, 3);
                long needed = (long) n * k * oh * ow * Float.BYTES;
                if (y.byteSize() < needed) {
                    throw new IllegalArgumentException("conv2d output buffer holds " + y.byteSize() + " bytes, needs " + needed
                        + " for [" + n + "," + k + "," + oh + "," + ow + "]");
                }
                yd = tensor4d(arena, n, k, oh, ow);
                int count = cudnn_h.CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
                MemorySegment perf = arena.allocate(cudnn_h.cudnnConvolutionFwdAlgoPerf_t.LAYOUT, count);
                MemorySegment returned = arena.allocate(JAVA_INT);
                CudnnException.check(cudnn_h.cudnnGetConvolutionForwardAlgorithm_v7(cudnn, xd, wd, cd, yd, count, returned, perf),
                    "cudnnGetConvolutionForwardAlgorithm_v7");
                int algo = -1;
                long workspace = 0;
                long stride = cudnn_h.cudnnConvolutionFwdAlgoPerf_t.LAYOUT.byteSize();
                for (int i = 0; i < returned.get(JAVA_INT, 0); i++) {
                    MemorySegment p = perf.asSlice(i * stride, stride);
                    if (cudnn_h.cudnnConvolutionFwdAlgoPerf_t.status(p) == cudnn_h.CUDNN_STATUS_SUCCESS) {
                        algo = cudnn_h.cudnnConvolutionFwdAlgoPerf_t.algo(p);
                        workspace = cudnn_h.cudnnConvolutionFwdAlgoPerf_t.memory(p);
                        break;
                    }
                }
                if (algo < 0) throw new IllegalStateException("cuDNN has no forward algorithm for this convolution");
                try (Arena ws = Arena.ofConfined()) {
                    MemorySegment wsPtr = workspace > 0 ? context.allocate(ws, workspace).address() : MemorySegment.NULL;
                    CudnnException.check(cudnn_h.cudnnConvolutionForward(cudnn, arena.allocateFrom(JAVA_FLOAT, 1f), xd, x.address(), wd,
                        weight.address(), cd, algo, wsPtr, workspace, arena.allocateFrom(JAVA_FLOAT, 0f), yd, y.address()),
                        "cudnnConvolutionForward");
                }
                return new int[] {oh, ow};
            } finally {
                cudnn_h.cudnnDestroyTensorDescriptor(xd);
                if (yd != null) cudnn_h.cudnnDestroyTensorDescriptor(yd);
                cudnn_h.cudnnDestroyFilterDescriptor(wd);
                cudnn_h.cudnnDestroyConvolutionDescriptor(cd);
            }
        }
    }

    private static MemorySegment tensor4d(Arena arena, int n, int c, int h, int w) {
        MemorySegment d = out(arena, "cudnnCreateTensorDescriptor", p -> cudnn_h.cudnnCreateTensorDescriptor(p));
        CudnnException.check(cudnn_h.cudnnSetTensor4dDescriptor(d, cudnn_h.CUDNN_TENSOR_NCHW, cudnn_h.CUDNN_DATA_FLOAT, n, c, h, w), "cudnnSetTensor4dDescriptor");
        return d;
    }

    private interface Creator { int create(MemorySegment out); }

    private static MemorySegment out(Arena arena, String call, Creator creator) {
        MemorySegment p = arena.allocate(ADDRESS);
        CudnnException.check(creator.create(p), call);
        return p.get(ADDRESS, 0);
    }

    /**
     * Records everything {@code work} enqueues on this backend's stream into a CUDA graph instead of
     * running it, and instantiates the graph for replay with {@link CudaGraph#launch()}.
     */
    public CudaGraph capture(Runnable work) {
        return CudaGraph.capture(context, work);
    }

    /** Bytes of device memory currently taken from the pool (see {@link CudaContext#poolBytesInUse()}). */
    public long poolBytesInUse() {
        return context.poolBytesInUse();
    }

    @Override
    public void close() {
        context.makeCurrent();
        context.synchronize();
        module.close();
        cudnn_h.cudnnDestroy(cudnn);
        cublas_h.cublasDestroy_v2(cublas);
        context.close();
    }
}
