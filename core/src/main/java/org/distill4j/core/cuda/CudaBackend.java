package org.distill4j.core.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.util.List;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibraryException;
import org.distill4j.bindings.cublas.CublasException;
import org.distill4j.bindings.cublas.cublas_h;
import org.distill4j.bindings.cudnn.CudnnException;
import org.distill4j.bindings.cudnn.cudnn_h;
import org.distill4j.bindings.kernels.DistillKernels;
import org.distill4j.bindings.kernels.ElementwiseKernels;
import org.distill4j.bindings.kernels.KernelModule;
import org.distill4j.bindings.kernels.OpKernels;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.BackendChecks;
import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.ConvGeometry;
import org.distill4j.core.DType;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Pool2dParams;
import org.distill4j.core.PoolMode;
import org.distill4j.core.Reduction;
import org.distill4j.core.Shapes;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.GemmShape;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import org.distill4j.core.loss.LossChecks;

/**
 * The CUDA backend: one GPU's context and stream, a cuBLAS handle, a cuDNN handle and our
 * kernels, all ordered on the context's stream. Ops enqueue work and return; reading a value back
 * (toFloatArray, item, hasNonFinite) is what synchronises.
 *
 * <p>Every op checks shapes on the host exactly as {@link org.distill4j.core.cpu.CpuBackend} does.
 * Differences from the CPU oracle, by design: gemm and convolutions use TF32 tensor cores unless
 * {@link MathMode#STRICT_FP32} is selected; crossEntropy cannot throw for an out-of-range label
 * without synchronising, so it writes NaN as the loss instead; batch normalization needs
 * eps >= CUDNN_BN_MIN_EPSILON (1e-5).
 */
@SuppressWarnings("restricted") // FFM: views of device buffers are zero-length segments at an offset
public final class CudaBackend implements Backend {
    /** cuBLAS/cuDNN math: TF32 tensor cores (default on sm_80+, as PyTorch's allow_tf32) or strict FP32. */
    public enum MathMode { TF32, STRICT_FP32 }

    private final CudaContext context;
    private final MemorySegment cublas;
    private final MemorySegment cudnn;
    private final KernelModule module;
    private final ElementwiseKernels elementwise;
    private final OpKernels ops;
    private final Arena scratchArena = Arena.ofShared();
    private final DeviceBuffer flags; // 16 bytes of device scratch: counters and flags
    private final DistillKernels distill;
    // The fused loss's scratch, kept for the backend's life: 3 u64 counters (counted rows, bad
    // label, finish ticket) that the kernel leaves zeroed, and a partial (soft, hard) per block
    // followed by the split regime's ring (DistillKernels.SCRATCH_FLOATS_PER_BLOCK).
    private final DeviceBuffer lossCounters, lossPartials;
    // crossEntropy's per-row losses (F32, one a row), grown by doubling outside graph capture and
    // kept for the backend's life: a graph captured with a smaller one may still replay it, so none
    // is freed before close (at most twice the largest size in all).
    private volatile DeviceBuffer crossEntropyRowLoss;
    private MathMode mathMode;
    private boolean closed;

    private CudaBackend(CudaContext context, MemorySegment cublas, MemorySegment cudnn, KernelModule module) {
        this.context = context;
        this.cublas = cublas;
        this.cudnn = cudnn;
        this.module = module;
        this.elementwise = new ElementwiseKernels(module, context.device().multiprocessors());
        this.ops = new OpKernels(module, context.device().multiprocessors());
        this.flags = context.allocate(scratchArena, 16);
        DeviceInfo info = context.device();
        this.distill = new DistillKernels(module, info.multiprocessors(), info.computeMajor(), info.maxSharedBytesPerBlockOptin());
        this.lossCounters = context.allocate(scratchArena, 3 * Long.BYTES);
        context.zero(lossCounters);
        this.lossPartials = context.allocate(scratchArena, distill.scratchFloats() * Float.BYTES);
        context.zero(lossPartials);  // the split regime's ring starts (and every launch leaves it) zero
        // cuBLAS gets a workspace of our own, so that no gemm allocates memory itself: required for
        // gemms inside a captured CUDA graph (cuBLAS docs, "CUDA Graphs support"); 32 MiB as
        // recommended for Hopper.
        DeviceBuffer workspace = context.allocate(scratchArena, CUBLAS_WORKSPACE_BYTES);
        CublasException.check(cublas_h.cublasSetWorkspace_v2(cublas, workspace.address(), CUBLAS_WORKSPACE_BYTES), "cublasSetWorkspace");
    }

    private static final long CUBLAS_WORKSPACE_BYTES = 32L << 20;

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

    /**
     * Our kernel module, loaded once into this backend's context: launchers of other kernel families
     * (e.g. the decoder's) are made over it instead of loading the fatbin again. Owned by the backend.
     */
    public KernelModule kernelModule() { return module; }

    /**
     * The backend's cuBLAS handle: bound to its stream, in its math mode (setMathMode changes it),
     * with the workspace graph capture needs. For gemm forms Backend does not offer; owned by the backend.
     */
    public MemorySegment cublasHandle() { return cublas; }

    public MathMode mathMode() { return mathMode; }

    @Override
    public boolean isHost() {
        return false;
    }

    @Override
    public String name() { return "cuda:" + context.device().ordinal(); }

    /** The GPU's ordinal (what {@link #create(int)} was given). */
    public int ordinal() { return context.device().ordinal(); }

    /**
     * Another backend on the same GPU with this one's settings (math mode): its own stream, cuBLAS
     * and cuDNN handles and scratch, for work that runs beside this backend's (the Predictor's workers).
     */
    public CudaBackend peer() {
        CudaBackend peer = create(ordinal());
        peer.setMathMode(mathMode);
        return peer;
    }

    /** Selects TF32 tensor-op math or strict FP32 for cuBLAS and cuDNN. */
    public void setMathMode(MathMode mode) {
        context.makeCurrent();
        CublasException.check(cublas_h.cublasSetMathMode(cublas,
            mode == MathMode.TF32 ? cublas_h.CUBLAS_TF32_TENSOR_OP_MATH : cublas_h.CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
        this.mathMode = mode;
    }

    private MemorySegment s() {
        return context.stream();
    }

    private void check(String op, DType dtype, Tensor... ts) {
        Shapes.alive(op, ts);
        Shapes.backend(op, this, ts);
        Shapes.dtype(op, dtype, ts);
        context.makeCurrent();
    }

    private void f32(String op, Tensor... ts) {
        check(op, DType.F32, ts);
    }

    private static MemorySegment p(Tensor t) {
        return t == null ? MemorySegment.NULL : t.data();
    }

    // ---- memory

    @Override
    public Tensor empty(DType dtype, long... shape) {
        Arena arena = Arena.ofShared();
        try {
            long bytes = Tensor.numel(shape) * dtype.bytes();
            return Tensor.wrap(this, dtype, shape, context.allocate(arena, Math.max(bytes, 16)).address(), arena);
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    @Override
    public Tensor empty(Arena arena, DType dtype, long... shape) {
        long bytes = Tensor.numel(shape) * dtype.bytes();
        return Tensor.wrap(this, dtype, shape, context.allocate(arena, Math.max(bytes, 16)).address(), null);
    }

    @Override
    public MemorySegment offset(MemorySegment data, long byteOffset, long bytes) {
        return data.reinterpret(byteOffset + bytes).asSlice(byteOffset, 0);
    }

    private DeviceBuffer buffer(Tensor t) {
        return new DeviceBuffer(t.data(), t.byteSize());
    }

    @Override
    public float[] read(Tensor t) {
        f32("read", t);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment host = a.allocate(Math.max(1, t.byteSize()), 16).asSlice(0, t.byteSize());
            if (t.byteSize() > 0) context.copyToHost(host, buffer(t), 0);
            return host.toArray(JAVA_FLOAT);
        }
    }

    @Override
    public void write(Tensor t, float[] values) {
        f32("write", t);
        if (values.length == 0) return;
        try (Arena a = Arena.ofConfined()) {
            context.copyToDevice(buffer(t), 0, a.allocateFrom(JAVA_FLOAT, values));
        }
    }

    @Override
    public long[] readLongs(Tensor t) {
        check("readLongs", DType.I64, t);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment host = a.allocate(Math.max(1, t.byteSize()), 16).asSlice(0, t.byteSize());
            if (t.byteSize() > 0) context.copyToHost(host, buffer(t), 0);
            return host.toArray(JAVA_LONG);
        }
    }

    @Override
    public void writeLongs(Tensor t, long[] values) {
        check("writeLongs", DType.I64, t);
        if (values.length == 0) return;
        try (Arena a = Arena.ofConfined()) {
            context.copyToDevice(buffer(t), 0, a.allocateFrom(JAVA_LONG, values));
        }
    }

    @Override
    public void copyFromHost(MemorySegment src, Tensor dst) {
        BackendChecks.copyFromHost(src, dst);
        if (src.byteSize() > 0) context.copyToDevice(buffer(dst), 0, src);
    }

    @Override
    public MemorySegment allocateHost(Arena arena, long bytes) {
        return context.allocatePinned(arena, Math.max(1, bytes)).asSlice(0, bytes);
    }

    @Override
    public Fence copyFromHostAsync(MemorySegment src, Tensor dst) {
        Shapes.alive("copyFromHostAsync", dst);
        if (src.byteSize() != dst.byteSize()) throw new IllegalArgumentException("copyFromHostAsync: " + src.byteSize() + " bytes for " + dst.describe());
        if (src.byteSize() > 0) context.copyToDeviceAsync(buffer(dst), 0, src);
        return context.recordEvent();
    }

    @Override
    public void copyToHost(Tensor src, MemorySegment dst) {
        Shapes.alive("copyToHost", src);
        if (src.byteSize() > 0) context.copyToHost(dst.asSlice(0, src.byteSize()), buffer(src), 0);
    }

    @Override
    public void copy(Tensor src, Tensor dst) {
        BackendChecks.copy(src, dst);
        if (src.byteSize() > 0) context.copy(buffer(dst), 0, buffer(src), 0, src.byteSize());
    }

    @Override
    public void zero(Tensor t) {
        Shapes.alive("zero", t);
        if (t.byteSize() > 0) context.zero(buffer(t));
    }

    @Override
    public void synchronize() {
        context.synchronize();
    }

    // ---- gemm (row-major on column-major cuBLAS: C^T = op(B)^T op(A)^T, operands and m/n swapped)

    @Override
    public void gemm(boolean transA, boolean transB, float alpha, Tensor a, Tensor b, float beta, Tensor c) {
        f32("gemm", a, b, c);
        GemmShape g = GemmShape.of(transA, transB, a, b, c);
        int lda = transA ? g.m() : g.k(), ldb = transB ? g.k() : g.n();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment al = arena.allocateFrom(JAVA_FLOAT, alpha), be = arena.allocateFrom(JAVA_FLOAT, beta);
            int opB = transB ? cublas_h.CUBLAS_OP_T : cublas_h.CUBLAS_OP_N, opA = transA ? cublas_h.CUBLAS_OP_T : cublas_h.CUBLAS_OP_N;
            if (g.batch() == 1) {
                CublasException.check(cublas_h.cublasSgemm_v2(cublas, opB, opA, g.n(), g.m(), g.k(), al, b.data(), ldb, a.data(), lda, be, c.data(), g.n()),
                    "cublasSgemm");
            } else {
                CublasException.check(cublas_h.cublasSgemmStridedBatched(cublas, opB, opA, g.n(), g.m(), g.k(), al, b.data(), ldb, (long) g.k() * g.n(),
                    a.data(), lda, (long) g.m() * g.k(), be, c.data(), g.n(), (long) g.m() * g.n(), g.batch()), "cublasSgemmStridedBatched");
            }
        }
    }

    /**
     * Row-major on column-major as {@link #gemm}: C_i^T = op(B_i)^T op(A_i)^T, so B goes first and
     * m/n swap; a row-major matrix with row stride ld is a column-major one with leading dimension
     * ld, so leading dimensions and batch strides pass through unchanged (stride 0 broadcasts, as
     * cuBLAS allows for A and B). Offsets become device pointers {@code offset * element size}
     * bytes into each tensor. F32: cublasSgemm / cublasSgemmStridedBatched (the handle's math mode:
     * TF32 unless pedantic). BF16 operands: cublasGemmEx / cublasGemmStridedBatchedEx with an
     * fp32 C and CUBLAS_COMPUTE_32F (fp32 accumulation; no TF32 involved, the inputs are bf16).
     */
    @Override
    public void gemmStridedBatched(boolean transA, boolean transB, int m, int n, int k, float alpha,
                                   Tensor a, long offA, int lda, long strideA, Tensor b, long offB, int ldb, long strideB,
                                   float beta, Tensor c, long offC, int ldc, long strideC, int batch) {
        BackendChecks.gemmStridedBatched(this, transA, transB, m, n, k, a, offA, lda, strideA, b, offB, ldb, strideB, c, offC, ldc, strideC, batch);
        if (m == 0 || n == 0) return;
        context.makeCurrent();
        long ab = a.dtype().bytes();
        MemorySegment ap = offset(a.data(), offA * ab, 0), bp = offset(b.data(), offB * ab, 0), cp = offset(c.data(), offC * Float.BYTES, 0);
        int opB = transB ? cublas_h.CUBLAS_OP_T : cublas_h.CUBLAS_OP_N, opA = transA ? cublas_h.CUBLAS_OP_T : cublas_h.CUBLAS_OP_N;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment al = arena.allocateFrom(JAVA_FLOAT, alpha), be = arena.allocateFrom(JAVA_FLOAT, beta);
            if (a.dtype() == DType.F32 && batch == 1) {
                CublasException.check(cublas_h.cublasSgemm_v2(cublas, opB, opA, n, m, k, al, bp, ldb, ap, lda, be, cp, ldc), "cublasSgemm");
            } else if (a.dtype() == DType.F32) {
                CublasException.check(cublas_h.cublasSgemmStridedBatched(cublas, opB, opA, n, m, k, al, bp, ldb, strideB, ap, lda, strideA, be, cp, ldc,
                    strideC, batch), "cublasSgemmStridedBatched");
            } else if (batch == 1) {
                CublasException.check(cublas_h.cublasGemmEx(cublas, opB, opA, n, m, k, al, bp, cublas_h.CUDA_R_16BF, ldb, ap, cublas_h.CUDA_R_16BF, lda, be,
                    cp, cublas_h.CUDA_R_32F, ldc, cublas_h.CUBLAS_COMPUTE_32F, cublas_h.CUBLAS_GEMM_DEFAULT), "cublasGemmEx");
            } else {
                CublasException.check(cublas_h.cublasGemmStridedBatchedEx(cublas, opB, opA, n, m, k, al, bp, cublas_h.CUDA_R_16BF, ldb, strideB, ap,
                    cublas_h.CUDA_R_16BF, lda, strideA, be, cp, cublas_h.CUDA_R_32F, ldc, strideC, batch, cublas_h.CUBLAS_COMPUTE_32F,
                    cublas_h.CUBLAS_GEMM_DEFAULT), "cublasGemmStridedBatchedEx");
            }
        }
    }

    // ---- bias

    @Override
    public void biasAdd(Tensor y, Tensor bias) {
        biasAdd("biasAdd", y, bias, false);
    }

    @Override
    public void channelBiasAdd(Tensor y, Tensor bias) {
        biasAdd("channelBiasAdd", y, bias, true);
    }

    @Override
    public void biasGrad(Tensor dy, Tensor dbias, boolean accumulate) {
        biasGrad("biasGrad", dy, dbias, accumulate, false);
    }

    @Override
    public void channelBiasGrad(Tensor dy, Tensor dbias, boolean accumulate) {
        biasGrad("channelBiasGrad", dy, dbias, accumulate, true);
    }

    /** The kernels take [outer, features, inner]: the last axis is inner = 1, the channel axis inner = H * W. */
    private void biasAdd(String op, Tensor y, Tensor bias, boolean channelAxis) {
        f32(op, y, bias);
        long[] l = Shapes.biasLayout(op, y, bias, channelAxis);
        ops.biasAdd(y.data(), bias.data(), l[1], l[2], y.numel(), s());
    }

    private void biasGrad(String op, Tensor dy, Tensor dbias, boolean accumulate, boolean channelAxis) {
        f32(op, dy, dbias);
        long[] l = Shapes.biasLayout(op, dy, dbias, channelAxis);
        ops.biasGrad(dy.data(), dbias.data(), l[0], l[1], l[2], accumulate, s());
    }

    // ---- activations

    @Override
    public void activation(Activation kind, float param, Tensor x, Tensor y) {
        f32("activation(" + kind + ")", x, y);
        Shapes.same("activation(" + kind + ")", x, y);
        ops.activation(kind.ordinal(), param, x.data(), y.data(), x.numel(), s());
    }

    @Override
    public void activationBackward(Activation kind, float param, Tensor x, Tensor y, Tensor dy, Tensor dx) {
        String op = "activationBackward(" + kind + ")";
        f32(op, x, y, dy, dx);
        Shapes.same(op, x, dy);
        Shapes.same(op, y, dy);
        Shapes.same(op, dx, dy);
        ops.activationBackward(kind.ordinal(), param, x.data(), y.data(), dy.data(), dx.data(), x.numel(), s());
    }

    // ---- softmax

    @Override
    public void softmax(Tensor x, Tensor y) {
        f32("softmax", x, y);
        Shapes.same("softmax", x, y);
        ops.softmax(x.data(), y.data(), x.rows(), x.cols(), false, s());
    }

    @Override
    public void logSoftmax(Tensor x, Tensor y) {
        f32("logSoftmax", x, y);
        Shapes.same("logSoftmax", x, y);
        ops.softmax(x.data(), y.data(), x.rows(), x.cols(), true, s());
    }

    @Override
    public void softmaxBackward(Tensor y, Tensor dy, Tensor dx) {
        f32("softmaxBackward", y, dy, dx);
        Shapes.same("softmaxBackward", y, dy);
        Shapes.same("softmaxBackward", y, dx);
        ops.softmaxBackward(y.data(), dy.data(), dx.data(), y.rows(), y.cols(), false, s());
    }

    @Override
    public void logSoftmaxBackward(Tensor y, Tensor dy, Tensor dx) {
        f32("logSoftmaxBackward", y, dy, dx);
        Shapes.same("logSoftmaxBackward", y, dy);
        Shapes.same("logSoftmaxBackward", y, dx);
        ops.softmaxBackward(y.data(), dy.data(), dx.data(), y.rows(), y.cols(), true, s());
    }

    // ---- cross-entropy: count, rows, finish (three launches, no host synchronisation)

    @Override
    public void crossEntropy(Tensor logits, Tensor labels, int ignoreIndex, float labelSmoothing, Tensor loss, Tensor gradLogits) {
        String op = "crossEntropy";
        BackendChecks.crossEntropy(this, logits, labels, labelSmoothing, loss, gradLogits);
        context.makeCurrent();
        long n = logits.size(0), c = logits.size(1);
        long rowLossBytes = Math.max(4, n * 4);
        DeviceBuffer cached = crossEntropyRowLoss;
        if (cached != null && cached.byteSize() >= rowLossBytes) {
            crossEntropy(logits, labels, ignoreIndex, labelSmoothing, loss, gradLogits, n, c, cached);
            return;
        }
        if (context.capturing()) {
            // Memory allocated now belongs to the graph (a memory node, valid only inside its
            // replays): a per-call buffer, freed by the graph itself, as before the cache.
            try (Arena arena = Arena.ofShared()) {
                crossEntropy(logits, labels, ignoreIndex, labelSmoothing, loss, gradLogits, n, c, context.allocate(arena, rowLossBytes));
            } // freed on the stream, after the kernels that use it
            return;
        }
        DeviceBuffer grown = context.allocate(scratchArena, Math.max(rowLossBytes, cached == null ? 0 : 2 * cached.byteSize()));
        crossEntropyRowLoss = grown;
        crossEntropy(logits, labels, ignoreIndex, labelSmoothing, loss, gradLogits, n, c, grown);
    }

    /** The three launches, with rowLoss (at least n floats of device scratch) for the per-row losses. */
    private void crossEntropy(Tensor logits, Tensor labels, int ignoreIndex, float labelSmoothing, Tensor loss, Tensor gradLogits, long n, long c,
                              DeviceBuffer rowLoss) {
        context.zero(flags);
        ops.ceCount(labels.data(), n, c, ignoreIndex, flags.address(), s());
        ops.ceRows(logits.data(), labels.data(), n, c, ignoreIndex, labelSmoothing, flags.address(), rowLoss.address(), p(gradLogits), s());
        ops.ceFinish(rowLoss.address(), n, flags.address(), loss.data(), s());
    }

    // ---- the fused distillation loss: one launch (with labels and no normalizer the kernel counts
    // the rows itself), no host synchronisation, no allocation

    @Override
    public void distillationLoss(Tensor student, Tensor teacher, Tensor labels, DistillationLoss config, long normalizer, Tensor loss, Tensor grad) {
        distillationLoss(student, teacher, labels, config, normalizer, loss, grad, null);
    }

    /**
     * {@link #distillationLoss} with an explicit launch plan ({@link #distillPlans}), or the
     * default one when {@code plan} is null: for benchmarks that compare the kernel's regimes and
     * tests that check each of them.
     */
    public void distillationLoss(Tensor student, Tensor teacher, Tensor labels, DistillationLoss config, long normalizer, Tensor loss, Tensor grad,
                                 DistillKernels.Plan plan) {
        LossChecks.distillation(this, student, teacher, labels, config, normalizer, loss, grad);
        context.makeCurrent();
        long n = student.size(0), c = student.size(1);
        Divergence div = config.effectiveDivergence();
        // 0: the kernel divides by the rows it counts (labels in [0, C)) or, without labels, by n
        float norm = normalizer > 0 ? normalizer : 0f;
        if (plan == null) plan = distill.plan(n, c, student.dtype().bytes());  // the context is current: the planner may read register counts
        distill.launch(plan, student.data(), teacher.data(), p(labels), n, c, div.ordinal(), config.temperature(), config.alpha(), config.beta(),
            config.ignoreIndex(), lossCounters.address(), norm, lossPartials.address(), loss.data(), (int) loss.numel(), p(grad), s());
    }

    /** The fused loss's regime and launch shape for [rows, cols] logits of this dtype (benchmarks and tests report it). */
    public DistillKernels.Plan distillPlan(long rows, long cols, DType dtype) {
        context.makeCurrent();  // planning reads the kernels' register counts from the module
        return distill.plan(rows, cols, dtype.bytes());
    }

    /** The fused loss's kernels, to build explicit plans ({@link DistillKernels#explicit}). */
    public DistillKernels distillPlans() {
        context.makeCurrent();  // explicit plans read the kernels' register counts on this thread
        return distill;
    }

    @Override
    public void averageTeachers(List<Tensor> teacherLogits, float temperature, Tensor out) {
        LossChecks.averageTeachers(this, teacherLogits, temperature, out);
        context.makeCurrent();
        int k = teacherLogits.size();
        // out doubles as the accumulator: every teacher is read before out is written for it, row by row.
        for (int i = 0; i < k; i++) {
            ops.teacherAccumulate(teacherLogits.get(i).data(), out.data(), out.data(), out.rows(), out.cols(), temperature, i == 0, i == k - 1, k, s());
        }
    }

    @Override
    public void scatterTopK(Tensor indices, Tensor values, Tensor dense) {
        LossChecks.topK(this, indices, values, dense);
        context.makeCurrent();
        context.zero(flags);
        ops.scatterTopK(indices.data(), values.data(), dense.data(), indices.size(0), indices.size(1), dense.size(1), flags.address(), s());
        try (Arena a = Arena.ofConfined()) {
            MemorySegment host = a.allocate(JAVA_INT);
            context.copyToHost(host, flags.slice(0, 4), 0);
            if (host.get(JAVA_INT, 0) != 0) {
                throw new IllegalArgumentException("scatterTopK: an index in " + indices.describe() + " is outside [0, " + dense.size(1) + ")");
            }
        }
    }

    @Override
    public void gatherRows(Tensor table, Tensor indices, Tensor out) {
        LossChecks.gatherRows(this, table, indices, out);
        context.makeCurrent();
        // No flag read-back: a bad index writes NaN (documented on Backend), so the step stays free
        // of host synchronisation and capturable.
        ops.gatherRows(table.data(), table.dtype() == DType.BF16, indices.data(), out.data(), out.size(0), out.size(1), table.size(0), s());
    }

    @Override
    public void incrementCounter(Tensor counter) {
        BackendChecks.incrementCounter(this, counter);
        context.makeCurrent();
        ops.incrementI64(counter.data(), s());
    }

    // ---- reductions

    @Override
    public void reduceRows(Reduction kind, Tensor x, Tensor out) {
        BackendChecks.reduceRows(this, x, out);
        context.makeCurrent();
        ops.reduceRows(kind.ordinal(), x.data(), out.data(), x.rows(), x.cols(), s());
    }

    @Override
    public void reduceCols(Reduction kind, Tensor x, Tensor out) {
        BackendChecks.reduceCols(this, x, out);
        context.makeCurrent();
        ops.reduceCols(kind.ordinal(), x.data(), out.data(), x.rows(), x.cols(), s());
    }

    // ---- elementwise

    @Override
    public void axpy(float alpha, Tensor x, Tensor y) {
        f32("axpy", x, y);
        Shapes.same("axpy", x, y);
        elementwise.axpy(alpha, x.data(), y.data(), x.numel(), s());
    }

    @Override
    public void scale(float alpha, Tensor x) {
        f32("scale", x);
        elementwise.scale(alpha, x.data(), x.numel(), s());
    }

    @Override
    public void mul(Tensor a, Tensor b, Tensor out) {
        f32("mul", a, b, out);
        Shapes.same("mul", a, b);
        Shapes.same("mul", a, out);
        ops.binary(1, a.data(), b.data(), out.data(), a.numel(), s());
    }

    @Override
    public void add(Tensor a, Tensor b, Tensor out) {
        f32("add", a, b, out);
        Shapes.same("add", a, b);
        Shapes.same("add", a, out);
        ops.binary(0, a.data(), b.data(), out.data(), a.numel(), s());
    }

    @Override
    public void fill(Tensor x, float value) {
        f32("fill", x);
        elementwise.fill(x.data(), value, x.numel(), s());
    }

    // ---- classification

    @Override
    public void argmax(Tensor x, Tensor out) {
        BackendChecks.argmax(this, x, out);
        context.makeCurrent();
        ops.argmax(x.data(), out.data(), x.rows(), x.cols(), s());
    }

    @Override
    public void correctCount(Tensor logits, Tensor labels, int ignoreIndex, Tensor out) {
        BackendChecks.correctCount(this, logits, labels, out);
        context.makeCurrent();
        ops.correctCount(logits.data(), labels.data(), logits.size(0), logits.size(1), ignoreIndex, out.data(), s());
    }

    // ---- dropout and random

    @Override
    public void dropout(float p, long seed, long offset, Tensor x, Tensor y) {
        BackendChecks.dropout(this, p, x, y);
        context.makeCurrent();
        ops.dropout(p, seed, offset, x.data(), y.data(), x.numel(), s());
    }

    @Override
    public void dropoutBackward(float p, long seed, long offset, Tensor dy, Tensor dx) {
        dropout(p, seed, offset, dy, dx);
    }

    @Override
    public void uniform(Tensor x, float low, float high, long seed, long offset) {
        f32("uniform", x);
        ops.uniform(low, high, seed, offset, x.data(), x.numel(), s());
    }

    // ---- cuDNN descriptors, created per call and destroyed in the same call

    private final class Descriptors implements AutoCloseable {
        private final java.util.ArrayList<Runnable> destroy = new java.util.ArrayList<>();
        private final Arena arena = Arena.ofConfined();

        MemorySegment tensor(long n, long c, long h, long w) {
            MemorySegment d = create(p -> cudnn_h.cudnnCreateTensorDescriptor(p), "cudnnCreateTensorDescriptor");
            destroy.add(() -> cudnn_h.cudnnDestroyTensorDescriptor(d));
            CudnnException.check(cudnn_h.cudnnSetTensor4dDescriptor(d, cudnn_h.CUDNN_TENSOR_NCHW, cudnn_h.CUDNN_DATA_FLOAT,
                (int) n, (int) c, (int) h, (int) w), "cudnnSetTensor4dDescriptor");
            return d;
        }

        MemorySegment filter(long k, long c, long r, long s) {
            MemorySegment d = create(p -> cudnn_h.cudnnCreateFilterDescriptor(p), "cudnnCreateFilterDescriptor");
            destroy.add(() -> cudnn_h.cudnnDestroyFilterDescriptor(d));
            CudnnException.check(cudnn_h.cudnnSetFilter4dDescriptor(d, cudnn_h.CUDNN_DATA_FLOAT, cudnn_h.CUDNN_TENSOR_NCHW,
                (int) k, (int) c, (int) r, (int) s), "cudnnSetFilter4dDescriptor");
            return d;
        }

        MemorySegment convolution(Conv2dParams p) {
            MemorySegment d = create(q -> cudnn_h.cudnnCreateConvolutionDescriptor(q), "cudnnCreateConvolutionDescriptor");
            destroy.add(() -> cudnn_h.cudnnDestroyConvolutionDescriptor(d));
            CudnnException.check(cudnn_h.cudnnSetConvolution2dDescriptor(d, p.padH(), p.padW(), p.strideH(), p.strideW(), 1, 1,
                cudnn_h.CUDNN_CROSS_CORRELATION, cudnn_h.CUDNN_DATA_FLOAT), "cudnnSetConvolution2dDescriptor");
            CudnnException.check(cudnn_h.cudnnSetConvolutionMathType(d,
                mathMode == MathMode.TF32 ? cudnn_h.CUDNN_TENSOR_OP_MATH : cudnn_h.CUDNN_FMA_MATH), "cudnnSetConvolutionMathType");
            return d;
        }

        MemorySegment pooling(PoolMode mode, Pool2dParams p) {
            MemorySegment d = create(q -> cudnn_h.cudnnCreatePoolingDescriptor(q), "cudnnCreatePoolingDescriptor");
            destroy.add(() -> cudnn_h.cudnnDestroyPoolingDescriptor(d));
            int m = mode == PoolMode.MAX ? cudnn_h.CUDNN_POOLING_MAX_DETERMINISTIC : cudnn_h.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING;
            CudnnException.check(cudnn_h.cudnnSetPooling2dDescriptor(d, m, cudnn_h.CUDNN_PROPAGATE_NAN, p.kernelH(), p.kernelW(), p.padH(), p.padW(),
                p.strideH(), p.strideW()), "cudnnSetPooling2dDescriptor");
            return d;
        }

        MemorySegment f(float v) {
            return arena.allocateFrom(JAVA_FLOAT, v);
        }


        private MemorySegment create(java.util.function.ToIntFunction<MemorySegment> creator, String call) {
            MemorySegment out = arena.allocate(ADDRESS);
            CudnnException.check(creator.applyAsInt(out), call);
            return out.get(ADDRESS, 0);
        }

        @Override
        public void close() {
            for (int i = destroy.size() - 1; i >= 0; i--) destroy.get(i).run();
            arena.close();
        }
    }

    /** A workspace for one cuDNN call, freed (stream-ordered) when {@code arena} closes. */
    private MemorySegment workspace(Arena arena, long bytes) {
        return bytes > 0 ? context.allocate(arena, bytes).address() : MemorySegment.NULL;
    }

    /** A cuDNN convolution algorithm and the workspace it needs, in bytes. */
    private record Algorithm(int algo, long workspace) {}

    /** One convolution direction ("forward", "data", "filter") at one shape and math mode. */
    private record ConvKey(String direction, ConvGeometry geometry, Conv2dParams params, MathMode mathMode) {}

    /**
     * The algorithm chosen per convolution, asked of cuDNN's heuristic once per shape: the heuristic
     * answers the same for the same descriptors on the same device, and asking it on every call made
     * CNN steps without a step graph host-bound (docs/gpu-testing.md). The descriptors themselves
     * are still made per call (microseconds).
     */
    private final java.util.concurrent.ConcurrentHashMap<ConvKey, Algorithm> convAlgorithms = new java.util.concurrent.ConcurrentHashMap<>();

    private Algorithm convAlgorithm(String direction, ConvGeometry g, Conv2dParams p, java.util.function.Supplier<Algorithm> heuristic) {
        return convAlgorithms.computeIfAbsent(new ConvKey(direction, g, p, mathMode), k -> heuristic.get());
    }

    /** Calls one of cuDNN's cudnnGet*Algorithm_v7 heuristics: fills {@code perf} with {@code requested} entries, ranked. */
    private interface Heuristic { int rank(int requested, MemorySegment returned, MemorySegment perf); }

    /**
     * The best-ranked deterministic algorithm whose status is success, else the best-ranked one
     * that succeeds. Deterministic first because cuDNN's atomics-based algorithms (backward filter
     * 0 and 3, backward data 0) make two runs of the same training differ in the last bits, and
     * then a captured step graph cannot be checked against direct steps, nor a run reproduced.
     * The three AlgoPerf structs (forward, backward data, backward filter) share one layout, which
     * the ABI check asserts for each, so one reader serves all three.
     */
    private static Algorithm firstUsable(Descriptors d, StructLayout layout, int requested, String call, Heuristic heuristic, String noneMessage) {
        MemorySegment perf = d.arena.allocate(layout, requested);
        MemorySegment returned = d.arena.allocate(JAVA_INT);
        CudnnException.check(heuristic.rank(requested, returned, perf), call);
        long stride = layout.byteSize();
        for (boolean deterministicOnly : new boolean[] {true, false}) {
            for (int i = 0; i < returned.get(JAVA_INT, 0); i++) {
                MemorySegment q = perf.asSlice(i * stride, stride);
                if (cudnn_h.cudnnConvolutionFwdAlgoPerf_t.status(q) != cudnn_h.CUDNN_STATUS_SUCCESS) continue;
                if (deterministicOnly && cudnn_h.cudnnConvolutionFwdAlgoPerf_t.determinism(q) != cudnn_h.CUDNN_DETERMINISTIC) continue;
                return new Algorithm(cudnn_h.cudnnConvolutionFwdAlgoPerf_t.algo(q), cudnn_h.cudnnConvolutionFwdAlgoPerf_t.memory(q));
            }
        }
        throw new IllegalStateException(noneMessage);
    }

    @Override
    public void conv2d(Tensor x, Tensor w, Conv2dParams p, Tensor y) {
        f32("conv2d", x, w, y);
        ConvGeometry g = Shapes.conv("conv2d", x, w, p, y);
        try (Descriptors d = new Descriptors(); Arena ws = Arena.ofShared()) {
            MemorySegment xd = d.tensor(g.n(), g.c(), g.h(), g.w()), wd = d.filter(g.k(), g.c(), g.r(), g.s()), cd = d.convolution(p);
            MemorySegment yd = d.tensor(g.n(), g.k(), g.oh(), g.ow());
            Algorithm a = convAlgorithm("forward", g, p, () -> firstUsable(d, cudnn_h.cudnnConvolutionFwdAlgoPerf_t.LAYOUT,
                cudnn_h.CUDNN_CONVOLUTION_FWD_ALGO_COUNT, "cudnnGetConvolutionForwardAlgorithm_v7",
                (n, r, perf) -> cudnn_h.cudnnGetConvolutionForwardAlgorithm_v7(cudnn, xd, wd, cd, yd, n, r, perf),
                "conv2d: cuDNN offers no forward algorithm for x " + java.util.Arrays.toString(x.shape())));
            CudnnException.check(cudnn_h.cudnnConvolutionForward(cudnn, d.f(1f), xd, x.data(), wd, w.data(), cd, a.algo(), workspace(ws, a.workspace()),
                a.workspace(), d.f(0f), yd, y.data()), "cudnnConvolutionForward");
        }
    }

    @Override
    public void conv2dBackwardData(Tensor dy, Tensor w, Conv2dParams p, Tensor dx) {
        f32("conv2dBackwardData", dy, w, dx);
        ConvGeometry g = Shapes.conv("conv2dBackwardData", dx, w, p, dy);
        try (Descriptors d = new Descriptors(); Arena ws = Arena.ofShared()) {
            MemorySegment dxd = d.tensor(g.n(), g.c(), g.h(), g.w()), wd = d.filter(g.k(), g.c(), g.r(), g.s()), cd = d.convolution(p);
            MemorySegment dyd = d.tensor(g.n(), g.k(), g.oh(), g.ow());
            Algorithm a = convAlgorithm("data", g, p, () -> firstUsable(d, cudnn_h.cudnnConvolutionBwdDataAlgoPerf_t.LAYOUT,
                cudnn_h.CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, "cudnnGetConvolutionBackwardDataAlgorithm_v7",
                (n, r, perf) -> cudnn_h.cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnn, wd, dyd, cd, dxd, n, r, perf),
                "conv2dBackwardData: cuDNN offers no algorithm for dx " + java.util.Arrays.toString(dx.shape())));
            CudnnException.check(cudnn_h.cudnnConvolutionBackwardData(cudnn, d.f(1f), wd, w.data(), dyd, dy.data(), cd, a.algo(),
                workspace(ws, a.workspace()), a.workspace(), d.f(0f), dxd, dx.data()), "cudnnConvolutionBackwardData");
        }
    }

    @Override
    public void conv2dBackwardFilter(Tensor x, Tensor dy, Conv2dParams p, Tensor dw, boolean accumulate) {
        f32("conv2dBackwardFilter", x, dy, dw);
        ConvGeometry g = Shapes.conv("conv2dBackwardFilter", x, dw, p, dy);
        try (Descriptors d = new Descriptors(); Arena ws = Arena.ofShared()) {
            MemorySegment xd = d.tensor(g.n(), g.c(), g.h(), g.w()), dwd = d.filter(g.k(), g.c(), g.r(), g.s()), cd = d.convolution(p);
            MemorySegment dyd = d.tensor(g.n(), g.k(), g.oh(), g.ow());
            Algorithm a = convAlgorithm("filter", g, p, () -> firstUsable(d, cudnn_h.cudnnConvolutionBwdFilterAlgoPerf_t.LAYOUT,
                cudnn_h.CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
                (n, r, perf) -> cudnn_h.cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnn, xd, dyd, cd, dwd, n, r, perf),
                "conv2dBackwardFilter: cuDNN offers no algorithm for dw " + java.util.Arrays.toString(dw.shape())));
            CudnnException.check(cudnn_h.cudnnConvolutionBackwardFilter(cudnn, d.f(1f), xd, x.data(), dyd, dy.data(), cd, a.algo(),
                workspace(ws, a.workspace()), a.workspace(), d.f(accumulate ? 1f : 0f), dwd, dw.data()), "cudnnConvolutionBackwardFilter");
        }
    }

    // ---- pooling (cuDNN)

    @Override
    public void pool2d(PoolMode mode, Pool2dParams p, Tensor x, Tensor y) {
        String op = "pool2d(" + mode + ")";
        f32(op, x, y);
        Shapes.pool(op, p, x, y);
        try (Descriptors d = new Descriptors()) {
            CudnnException.check(cudnn_h.cudnnPoolingForward(cudnn, d.pooling(mode, p), d.f(1f), d.tensor(x.size(0), x.size(1), x.size(2), x.size(3)),
                x.data(), d.f(0f), d.tensor(y.size(0), y.size(1), y.size(2), y.size(3)), y.data()), "cudnnPoolingForward");
        }
    }

    @Override
    public void pool2dBackward(PoolMode mode, Pool2dParams p, Tensor x, Tensor y, Tensor dy, Tensor dx) {
        String op = "pool2dBackward(" + mode + ")";
        f32(op, x, y, dy, dx);
        Shapes.pool(op, p, x, y);
        Shapes.same(op, y, dy);
        Shapes.same(op, x, dx);
        try (Descriptors d = new Descriptors()) {
            MemorySegment xd = d.tensor(x.size(0), x.size(1), x.size(2), x.size(3)), yd = d.tensor(y.size(0), y.size(1), y.size(2), y.size(3));
            CudnnException.check(cudnn_h.cudnnPoolingBackward(cudnn, d.pooling(mode, p), d.f(1f), yd, y.data(), yd, dy.data(), xd, x.data(),
                d.f(0f), xd, dx.data()), "cudnnPoolingBackward");
        }
    }

    @Override
    public void globalAvgPool(Tensor x, Tensor y) {
        f32("globalAvgPool", x, y);
        Shapes.rank("globalAvgPool", x, 4);
        Shapes.expect("globalAvgPool output", y, x.size(0), x.size(1), 1, 1);
        ops.reduceRows(Reduction.MEAN.ordinal(), x.data(), y.data(), x.size(0) * x.size(1), x.size(2) * x.size(3), s());
    }

    @Override
    public void globalAvgPoolBackward(Tensor dy, Tensor dx) {
        f32("globalAvgPoolBackward", dy, dx);
        Shapes.rank("globalAvgPoolBackward", dx, 4);
        Shapes.expect("globalAvgPoolBackward dy", dy, dx.size(0), dx.size(1), 1, 1);
        ops.broadcastMeanGrad(dy.data(), dx.data(), dx.size(2) * dx.size(3), dx.numel(), s());
    }

    // ---- batch normalization (cuDNN, spatial mode over x viewed as [N, C, inner, 1])

    private static void bnEps(String op, float eps) {
        if (eps < cudnnBnMinEpsilon()) {
            throw new IllegalArgumentException(op + ": eps " + eps + " is below cuDNN's minimum " + cudnnBnMinEpsilon());
        }
    }

    private static double cudnnBnMinEpsilon() {
        return 1e-5 - 1e-12; // CUDNN_BN_MIN_EPSILON is 1e-5 (checked against cudnn.h by the ABI check)
    }

    private MemorySegment bnDescriptor(Descriptors d, MemorySegment xd) {
        MemorySegment bn = d.create(q -> cudnn_h.cudnnCreateTensorDescriptor(q), "cudnnCreateTensorDescriptor");
        d.destroy.add(() -> cudnn_h.cudnnDestroyTensorDescriptor(bn));
        CudnnException.check(cudnn_h.cudnnDeriveBNTensorDescriptor(bn, xd, cudnn_h.CUDNN_BATCHNORM_SPATIAL), "cudnnDeriveBNTensorDescriptor");
        return bn;
    }

    @Override
    public void batchNormTrain(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean, Tensor runningVar, float momentum, float eps,
                               Tensor y, Tensor saveMean, Tensor saveInvStd) {
        String op = "batchNormTrain";
        long[] l = BackendChecks.batchNormTrain(this, x, gamma, beta, runningMean, runningVar, y, saveMean, saveInvStd);
        context.makeCurrent();
        bnEps(op, eps);
        try (Descriptors d = new Descriptors()) {
            MemorySegment xd = d.tensor(l[0], l[1], l[2], 1), bn = bnDescriptor(d, xd);
            CudnnException.check(cudnn_h.cudnnBatchNormalizationForwardTraining(cudnn, cudnn_h.CUDNN_BATCHNORM_SPATIAL, d.f(1f), d.f(0f), xd, x.data(),
                xd, y.data(), bn, gamma.data(), beta.data(), momentum, runningMean.data(), runningVar.data(), eps, saveMean.data(), saveInvStd.data()),
                "cudnnBatchNormalizationForwardTraining");
        }
    }

    @Override
    public void batchNormEval(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean, Tensor runningVar, float eps, Tensor y) {
        String op = "batchNormEval";
        f32(op, x, gamma, beta, runningMean, runningVar, y);
        Shapes.same(op, x, y);
        long[] l = Shapes.channelLayout(op, x, gamma, beta, runningMean, runningVar);
        bnEps(op, eps);
        try (Descriptors d = new Descriptors()) {
            MemorySegment xd = d.tensor(l[0], l[1], l[2], 1), bn = bnDescriptor(d, xd);
            CudnnException.check(cudnn_h.cudnnBatchNormalizationForwardInference(cudnn, cudnn_h.CUDNN_BATCHNORM_SPATIAL, d.f(1f), d.f(0f), xd, x.data(),
                xd, y.data(), bn, gamma.data(), beta.data(), runningMean.data(), runningVar.data(), eps), "cudnnBatchNormalizationForwardInference");
        }
    }

    @Override
    public void batchNormBackward(Tensor x, Tensor dy, Tensor gamma, Tensor saveMean, Tensor saveInvStd, Tensor dx, Tensor dgamma, Tensor dbeta) {
        String op = "batchNormBackward";
        f32(op, x, dy, gamma, saveMean, saveInvStd, dx, dgamma, dbeta);
        Shapes.same(op, x, dy);
        Shapes.same(op, x, dx);
        long[] l = Shapes.channelLayout(op, x, gamma, saveMean, saveInvStd, dgamma, dbeta);
        try (Descriptors d = new Descriptors()) {
            MemorySegment xd = d.tensor(l[0], l[1], l[2], 1), bn = bnDescriptor(d, xd);
            // epsilon is unused when the saved statistics are passed; cuDNN still validates it.
            CudnnException.check(cudnn_h.cudnnBatchNormalizationBackward(cudnn, cudnn_h.CUDNN_BATCHNORM_SPATIAL, d.f(1f), d.f(0f), d.f(1f), d.f(0f),
                xd, x.data(), xd, dy.data(), xd, dx.data(), bn, gamma.data(), dgamma.data(), dbeta.data(), 1e-5, saveMean.data(), saveInvStd.data()),
                "cudnnBatchNormalizationBackward");
        }
    }

    // ---- optimizers

    @Override
    public void sgdStep(Optimizers.Sgd cfg, long step, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum) {
        BackendChecks.optimizerStep("sgdStep", step);
        sgd(cfg, step == 1, MemorySegment.NULL, params, grads, momentum);
    }

    @Override
    public void sgdStep(Optimizers.Sgd cfg, Tensor scalars, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum) {
        sgd(cfg, false, stepScalars("sgdStep", scalars), params, grads, momentum);
    }

    private void sgd(Optimizers.Sgd cfg, boolean first, MemorySegment scalars, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum) {
        boolean useMomentum = cfg.momentum() != 0;
        Shapes.optimizerState("sgdStep", this, params, useMomentum ? List.of(grads, momentum) : List.of(grads));
        context.makeCurrent();
        for (int t = 0; t < params.size(); t++) {
            ops.sgd(params.get(t).data(), grads.get(t).data(), useMomentum ? momentum.get(t).data() : MemorySegment.NULL, cfg.lr(), cfg.momentum(),
                cfg.dampening(), cfg.nesterov(), cfg.weightDecay(), first, params.get(t).numel(), scalars, s());
        }
    }

    @Override
    public void adamwStep(Optimizers.AdamW cfg, long step, List<Tensor> params, List<Tensor> grads, List<Tensor> m, List<Tensor> v) {
        BackendChecks.optimizerStep("adamwStep", step);
        float bc1 = (float) (1 - Math.pow(cfg.beta1(), step)), bc2 = (float) (1 - Math.pow(cfg.beta2(), step));
        adamw(cfg, 1 - cfg.lr() * cfg.weightDecay(), bc1, bc2, MemorySegment.NULL, params, grads, m, v);
    }

    @Override
    public void adamwStep(Optimizers.AdamW cfg, Tensor scalars, List<Tensor> params, List<Tensor> grads, List<Tensor> m, List<Tensor> v) {
        adamw(cfg, 0f, 1f, 1f, stepScalars("adamwStep", scalars), params, grads, m, v);
    }

    private void adamw(Optimizers.AdamW cfg, float decay, float bc1, float bc2, MemorySegment scalars, List<Tensor> params, List<Tensor> grads,
                       List<Tensor> m, List<Tensor> v) {
        Shapes.optimizerState("adamwStep", this, params, List.of(grads, m, v));
        context.makeCurrent();
        for (int t = 0; t < params.size(); t++) {
            ops.adamw(params.get(t).data(), grads.get(t).data(), m.get(t).data(), v.get(t).data(), cfg.lr(), cfg.beta1(), cfg.beta2(), cfg.eps(),
                decay, bc1, bc2, params.get(t).numel(), scalars, s());
        }
    }

    private MemorySegment stepScalars(String op, Tensor scalars) {
        BackendChecks.stepScalars(this, op, scalars);
        context.makeCurrent();
        return scalars.data();
    }

    // ---- checks

    @Override
    public boolean hasNonFinite(Tensor... tensors) {
        f32("hasNonFinite", tensors);
        context.zero(flags);
        for (Tensor t : tensors) ops.nonFinite(t.data(), t.numel(), flags.address(), s());
        try (Arena a = Arena.ofConfined()) {
            MemorySegment host = a.allocate(JAVA_INT);
            context.copyToHost(host, flags.slice(0, 4), 0);
            return host.get(JAVA_INT, 0) != 0;
        }
    }

    /**
     * Records everything {@code work} enqueues on this backend's stream into a CUDA graph instead of
     * running it, and instantiates the graph for replay with {@link CudaGraph#launch()}.
     */
    @Override
    public CudaGraph capture(Runnable work) {
        return CudaGraph.capture(context, work);
    }

    /** Bytes of device memory currently taken from the pool (see {@link CudaContext#poolBytesInUse()}). */
    public long poolBytesInUse() {
        return context.poolBytesInUse();
    }

    /** Peak bytes taken from the device pool since it was created (see {@link CudaContext#poolBytesPeak()}). */
    public long poolBytesPeak() {
        return context.poolBytesPeak();
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        context.makeCurrent();
        context.synchronize();
        scratchArena.close();
        module.close();
        cudnn_h.cudnnDestroy(cudnn);
        cublas_h.cublasDestroy_v2(cublas);
        context.close();
    }

}
