package org.distill4j.core;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * The ops a distillation step needs, on one device. {@link org.distill4j.core.cpu.CpuBackend} is the
 * reference (and the oracle for GPU tests); {@link org.distill4j.core.cuda.CudaBackend} maps each op
 * onto cuBLAS, cuDNN or our kernels, asynchronously on its stream.
 *
 * <p>Conventions: tensors are row-major float32 unless stated; "rows" of a tensor are its elements
 * grouped by the last dimension; outputs are written into the caller's tensors, never allocated;
 * shape or dtype mismatches throw IllegalArgumentException naming the op and the shapes; ops on a
 * closed tensor throw IllegalStateException.
 *
 * <p>What ops still allocate on their own, per call (outputs aside):
 * <ul>
 *   <li>CPU, natively (through {@link org.distill4j.core.cpu.CpuMemory}, so counted): the
 *       convolutions, forward and both backwards, one im2col/col2im scratch of C·R·S x OH·OW
 *       floats per call; the fused distillation loss on its C fast path, per block of rows a
 *       flag byte a row and 16 bytes of sums, and inside the C kernel a {@code malloc}ed row
 *       scratch of 24 x C bytes (not counted). Every other CPU op allocates nothing natively
 *       (for crossEntropy, tested); fill writes its range loops straight into the segment.
 *   <li>CPU, on the Java heap: small objects (lambdas, and fork-join tasks for ops large enough
 *       to run in parallel) on most ops; arrays: crossEntropy a double per chunk of rows when
 *       it runs in parallel (none below 32K element-operations: tested), biasGrad a double per
 *       feature (per block of 256), averageTeachers a double[C] per row, the distillation loss
 *       its result and per-block sums. The Predictor's CPU path uses none of these ops and
 *       allocates nothing once warm, heap or native (docs/inference.md).
 *   <li>CUDA, on the host: every kernel launch opens a confined arena with one block of 16 bytes
 *       a parameter (the argument array: {@code LaunchArgs}); gemm an arena for alpha and beta;
 *       each convolution, pooling or batch-norm call creates and destroys its cuDNN descriptors
 *       in an arena; reads back (item, hasNonFinite, scatterTopK's check) stage through a small
 *       arena.
 *   <li>CUDA, on the device: convolutions take their cuDNN workspace per call from the
 *       stream-ordered pool (released to the pool, not to the driver: steady-state steps reuse
 *       pool memory); crossEntropy's per-row scratch is kept by the backend and grows by doubling
 *       (per call only when a larger one is first needed inside a graph capture); the fused
 *       distillation loss uses the backend's own scratch.
 * </ul>
 */
public interface Backend extends AutoCloseable {
    /** "cpu" or "cuda:0". */
    String name();

    /** True when tensor storage is ordinary host memory that Java can read and write (the CPU backend). */
    boolean isHost();

    // ---- memory

    /** A tensor owning fresh memory (freed by {@link Tensor#close()}); contents undefined. */
    Tensor empty(DType dtype, long... shape);

    /** A tensor whose memory lives until {@code arena} closes; contents undefined. */
    Tensor empty(Arena arena, DType dtype, long... shape);

    default Tensor zeros(DType dtype, long... shape) {
        Tensor t = empty(dtype, shape);
        zero(t);
        return t;
    }

    default Tensor fromArray(float[] values, long... shape) {
        return empty(DType.F32, shape).copyFrom(values);
    }

    /** For views: the storage segment {@code byteOffset} bytes into {@code data}, {@code bytes} long, same lifetime. */
    MemorySegment offset(MemorySegment data, long byteOffset, long bytes);

    /**
     * Converts a tensor whose storage holds another {@link Tensor.Layout} back to row-major, in
     * place, and records it ({@link Tensor#data()} calls this). Only a backend that leaves tensors
     * in another layout has any to convert.
     */
    default void toRowMajor(Tensor t) {
        throw new IllegalStateException(name() + " keeps every tensor row-major, but " + t.describe() + " holds " + t.layout());
    }

    float[] read(Tensor t);

    void write(Tensor t, float[] values);

    long[] readLongs(Tensor t);

    void writeLongs(Tensor t, long[] values);

    /** Copies {@code src.byteSize()} bytes of host memory (e.g. a memory-mapped file) into {@code dst}, without a Java array. */
    void copyFromHost(MemorySegment src, Tensor dst);

    /**
     * Host memory for staging transfers, freed when {@code arena} closes: page-locked
     * (cuMemHostAlloc) on CUDA so copies from it can be asynchronous; ordinary memory on the CPU.
     */
    MemorySegment allocateHost(Arena arena, long bytes);

    /**
     * Starts copying {@code src} (host, ideally from {@link #allocateHost}) into {@code dst} and
     * returns at once on CUDA; ops enqueued afterwards see the data. {@code src} must not change
     * until the returned fence has been awaited. On the CPU the copy is done when this returns.
     */
    Fence copyFromHostAsync(MemorySegment src, Tensor dst);

    /** Completion of asynchronous work: {@link #await()} blocks the calling thread until it is done. */
    interface Fence extends AutoCloseable {
        void await();

        @Override
        void close();

        /** A fence that is already complete. */
        Fence DONE = new Fence() {
            @Override public void await() {}
            @Override public void close() {}
        };
    }

    /** Copies the tensor's bytes into host memory {@code dst} (at least {@code src.byteSize()} bytes); synchronises on a GPU. */
    void copyToHost(Tensor src, MemorySegment dst);

    /** dst = src, same shape and dtype. */
    void copy(Tensor src, Tensor dst);

    /** Sets every byte to zero (0.0f for F32). */
    void zero(Tensor t);

    /** Waits for all enqueued work (a no-op on the CPU). */
    void synchronize();

    // ---- gemm

    /**
     * C = alpha op(A) op(B) + beta C. 2-D: A [m,k] (or [k,m] transposed), B [k,n] (or [n,k]), C [m,n].
     * 3-D: the same per batch, all three with the same leading batch dimension (strided-batched).
     */
    void gemm(boolean transA, boolean transB, float alpha, Tensor a, Tensor b, float beta, Tensor c);

    /**
     * {@code batch} gemms over strided views, what attention needs (per-head products over a
     * [B, T, H, D] activation without copying it to [B, H, T, D]): for i in [0, batch),
     * C_i = alpha op(A_i) op(B_i) + beta C_i, where X_i is the row-major matrix starting at element
     * {@code offX + i * strideX} of tensor x, its rows {@code ldX} elements apart. op(A_i) is
     * [m, k] (A_i stored [m, k], or [k, m] when transA), op(B_i) [k, n], C_i [m, n]. A stride of 0
     * broadcasts that operand over the batch (A and B only). Offsets, leading dimensions and strides
     * count elements, not bytes. A and B are both F32, or both BF16 (products accumulated in fp32),
     * and C is F32. CUDA: cublasSgemmStridedBatched for F32 (TF32 tensor cores unless pedantic, as
     * {@link #gemm}); cublasGemmEx / cublasGemmStridedBatchedEx with fp32 compute for BF16.
     */
    void gemmStridedBatched(boolean transA, boolean transB, int m, int n, int k, float alpha,
                            Tensor a, long offA, int lda, long strideA, Tensor b, long offB, int ldb, long strideB,
                            float beta, Tensor c, long offC, int ldc, long strideC, int batch);

    // ---- bias

    /**
     * y += bias over the last axis: y [..., F] with bias [F] (a linear layer's output [N, F], a
     * transformer's [B, T, F]). The bias must hold exactly F elements.
     */
    void biasAdd(Tensor y, Tensor bias);

    /** dbias (+)= the sum of dy over every axis but the last (see {@link #biasAdd}). */
    void biasGrad(Tensor dy, Tensor dbias, boolean accumulate);

    /** y += bias over the channel axis 1: y [N, C, ...] (a convolution's NCHW output) with bias [C]. */
    void channelBiasAdd(Tensor y, Tensor bias);

    /** dbias (+)= the sum of dy over every axis but axis 1 (see {@link #channelBiasAdd}). */
    void channelBiasGrad(Tensor dy, Tensor dbias, boolean accumulate);

    // ---- activations

    /** y = f(x), elementwise; {@code param} is LeakyReLU's slope, ignored otherwise. y may be x. */
    void activation(Activation kind, float param, Tensor x, Tensor y);

    /** dx = f'(x) dy. Needs x (and y = f(x), used where cheaper: tanh, sigmoid). dx may be dy. */
    void activationBackward(Activation kind, float param, Tensor x, Tensor y, Tensor dy, Tensor dx);

    // ---- softmax over the last dimension

    void softmax(Tensor x, Tensor y);

    void logSoftmax(Tensor x, Tensor y);

    /** dx = y * (dy - sum(dy * y)) with y = softmax(x). */
    void softmaxBackward(Tensor y, Tensor dy, Tensor dx);

    /** dx = dy - exp(y) * sum(dy) with y = log_softmax(x). */
    void logSoftmaxBackward(Tensor y, Tensor dy, Tensor dx);

    /**
     * Fused cross-entropy over logits [N, C] and I64 labels [N], as torch.nn.functional.cross_entropy
     * with reduction="mean": rows whose label is {@code ignoreIndex} do not count; label smoothing
     * eps mixes the one-hot target with the uniform one. Writes the mean loss into {@code loss}
     * (one element) and, when {@code gradLogits} is not null, dL/dlogits in the same pass.
     * A label outside [0, C) that is not ignoreIndex is an error.
     */
    void crossEntropy(Tensor logits, Tensor labels, int ignoreIndex, float labelSmoothing, Tensor loss, Tensor gradLogits);

    // ---- the fused distillation loss

    /**
     * The distillation loss and its gradient in one call (docs/distillation-loss.md):
     * L = sum over counted rows of [alpha T^2 D(p_t, p_s) + (1 - alpha) CE(s, y)] / normalizer.
     *
     * @param student    logits s [N, C] (F32)
     * @param teacher    logits t [N, C] (F32); -inf entries carry no mass (a top-k teacher, densified by {@link #scatterTopK})
     * @param labels     I64 [N], or null: then every row counts and alpha must be 1
     * @param normalizer 0: divide by the rows counted in this call; n > 0: divide by n, a global row
     *                   count, so that accumulated micro-batches give the full batch's gradient
     * @param loss       F32 with 1 element (the loss) or 3 ([loss, soft term, hard term], each
     *                   already weighted and normalised)
     * @param grad       dL/ds [N, C]; null for none; may be {@code student} itself (in place)
     */
    void distillationLoss(Tensor student, Tensor teacher, Tensor labels, org.distill4j.core.loss.DistillationLoss config, long normalizer,
                          Tensor loss, Tensor grad);

    /**
     * Several teachers as one: out = T log(mean_i softmax(t_i / T)) per row, so that
     * softmax(out / T) is the average of the teachers' softened distributions (computed in log
     * space). All tensors [N, C].
     */
    void averageTeachers(List<Tensor> teacherLogits, float temperature, Tensor out);

    /** dense[N, C] = -inf everywhere but dense[r, indices[r, j]] = values[r, j] (indices I64 [N, k], values F32 [N, k]). */
    void scatterTopK(Tensor indices, Tensor values, Tensor dense);

    /**
     * out[r, :] = table[indices[r], :] as float32, for table F32 or BF16 [M, C], indices I64 [N],
     * out F32 [N, C] (a teacher-logit cache lookup). An index outside [0, M): the CPU backend throws;
     * the CUDA backend, which does not synchronise to check, writes a row of NaN (so the loss
     * becomes NaN and the trainer stops with the step number).
     */
    void gatherRows(Tensor table, Tensor indices, Tensor out);

    /** counter += 1 for an I64 scalar, on the device (batch norm's num_batches_tracked; a graph replay counts too). */
    void incrementCounter(Tensor counter);

    // ---- reductions over a [rows, cols] view

    /** out[r] = reduce over the last dimension of x. */
    void reduceRows(Reduction kind, Tensor x, Tensor out);

    /** out[c] = reduce over all rows of x (x viewed as [rows, cols]). */
    void reduceCols(Reduction kind, Tensor x, Tensor out);

    // ---- elementwise

    /** y += alpha x. */
    void axpy(float alpha, Tensor x, Tensor y);

    /** x *= alpha. */
    void scale(float alpha, Tensor x);

    /** out = a * b. */
    void mul(Tensor a, Tensor b, Tensor out);

    /** out = a + b. */
    void add(Tensor a, Tensor b, Tensor out);

    void fill(Tensor x, float value);

    /**
     * out = a + b with b broadcast over a's leading axes: b's shape is a suffix of a's (a [B, T, D]
     * plus b [T, D] or [D]; a learned position table added to a batch of embeddings). out has a's
     * shape and may be a itself, not b. One copy (none when out is a) and one {@link #biasAdd}
     * over a viewed as [rows, numel(b)]: no kernel of its own, the same on every backend.
     */
    default void addBroadcast(Tensor a, Tensor b, Tensor out) {
        BackendChecks.addBroadcast(this, a, b, out);
        if (out != a) copy(a, out);
        if (b.numel() == 0) return;
        biasAdd(out.view(out.numel() / b.numel(), b.numel()), b.view(b.numel()));
    }

    // ---- classification

    /** out[r] (I64) = index of the largest value of row r (the first one on ties). */
    void argmax(Tensor x, Tensor out);

    /** out (I64, one element) += number of rows whose argmax equals the label; ignoreIndex rows do not count. */
    void correctCount(Tensor logits, Tensor labels, int ignoreIndex, Tensor out);

    // ---- dropout with a counter-based RNG (Philox4x32-10): the same mask on every backend

    /**
     * y = x * keep / (1 - p), keep = (u >= p) with u = Philox(seed, offset + i) in [0, 1). The mask is
     * never stored: the backward regenerates it from (seed, offset).
     */
    void dropout(float p, long seed, long offset, Tensor x, Tensor y);

    void dropoutBackward(float p, long seed, long offset, Tensor dy, Tensor dx);

    /** x = low + (high - low) u, u = Philox(seed, offset + i) in [0, 1): the same values on every backend. */
    void uniform(Tensor x, float low, float high, long seed, long offset);

    // ---- convolution (NCHW, weight [K, C, R, S], no bias: add it with biasAdd)

    void conv2d(Tensor x, Tensor w, Conv2dParams p, Tensor y);

    void conv2dBackwardData(Tensor dy, Tensor w, Conv2dParams p, Tensor dx);

    void conv2dBackwardFilter(Tensor x, Tensor dy, Conv2dParams p, Tensor dw, boolean accumulate);

    /**
     * y = conv2d(x, w) + bias over the channel axis (bias [K]; null: none). By default
     * {@link #conv2d} then {@link #channelBiasAdd}; a backend whose convolution adds a bias in the
     * same pass (the CPU backend on oneDNN) overrides it.
     */
    default void conv2d(Tensor x, Tensor w, Tensor bias, Conv2dParams p, Tensor y) {
        conv2d(x, w, p, y);
        if (bias != null) channelBiasAdd(y, bias);
    }

    /**
     * dw (+)= the weight gradient and dbias (+)= the bias gradient (the sum of dy over every axis
     * but 1; null: none) of {@link #conv2d(Tensor, Tensor, Tensor, Conv2dParams, Tensor)}. By
     * default {@link #conv2dBackwardFilter} then {@link #channelBiasGrad}.
     */
    default void conv2dBackwardFilter(Tensor x, Tensor dy, Conv2dParams p, Tensor dw, Tensor dbias, boolean accumulate) {
        conv2dBackwardFilter(x, dy, p, dw, accumulate);
        if (dbias != null) channelBiasGrad(dy, dbias, accumulate);
    }

    // ---- pooling (NCHW)

    void pool2d(PoolMode mode, Pool2dParams p, Tensor x, Tensor y);

    /** dx = d pool / dx applied to dy. Max pooling routes each gradient to the first maximum of its window. */
    void pool2dBackward(PoolMode mode, Pool2dParams p, Tensor x, Tensor y, Tensor dy, Tensor dx);

    /** AdaptiveAvgPool2d(1): y [N, C, 1, 1] = mean of x [N, C, H, W] over H, W. */
    void globalAvgPool(Tensor x, Tensor y);

    void globalAvgPoolBackward(Tensor dy, Tensor dx);

    // ---- batch normalization over x [N, C, ...] (channel axis 1), as torch.nn.BatchNorm1d/2d

    /**
     * Training mode: normalises with the batch's mean and biased variance; updates the running
     * statistics as PyTorch does (running = (1 - momentum) running + momentum batch, with the
     * unbiased variance); saves mean and 1/sqrt(var + eps) per channel for the backward.
     */
    void batchNormTrain(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean, Tensor runningVar, float momentum, float eps,
                        Tensor y, Tensor saveMean, Tensor saveInvStd);

    /** Eval mode: normalises with the running statistics. */
    void batchNormEval(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean, Tensor runningVar, float eps, Tensor y);

    /** Gradients of batchNormTrain: dx, and dgamma/dbeta (overwritten). */
    void batchNormBackward(Tensor x, Tensor dy, Tensor gamma, Tensor saveMean, Tensor saveInvStd, Tensor dx, Tensor dgamma, Tensor dbeta);

    // ---- fused optimizer updates over all parameters

    /** One SGD step (step counts from 1; momentum buffers are initialised from the gradient on step 1). */
    void sgdStep(Optimizers.Sgd config, long step, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum);

    /** One AdamW step (step counts from 1, for bias correction). */
    void adamwStep(Optimizers.AdamW config, long step, List<Tensor> params, List<Tensor> grads, List<Tensor> m, List<Tensor> v);

    /**
     * One SGD step whose per-step values are read from the device: {@code scalars} F32 [4] holds
     * {@link Optimizers.Sgd#scalars(long)} (the learning rate, config.lr() being ignored, and the
     * first-step flag). What a captured step graph uses, so each replay can have its own rate.
     */
    void sgdStep(Optimizers.Sgd config, Tensor scalars, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum);

    /** One AdamW step whose per-step values are read from the device: {@code scalars} = {@link Optimizers.AdamW#scalars(long)}. */
    void adamwStep(Optimizers.AdamW config, Tensor scalars, List<Tensor> params, List<Tensor> grads, List<Tensor> m, List<Tensor> v);

    // ---- step graphs

    /** Recorded device work, replayed as a whole (on CUDA a captured and instantiated CUDA graph). */
    interface Graph extends AutoCloseable {
        /** Enqueues the recorded work once more. */
        void replay();

        @Override
        void close();
    }

    /**
     * Records what {@code work} enqueues, without running it, for replay. Inside {@code work}
     * nothing may read device memory back to the host or copy synchronously from the host; what
     * changes between replays must be read from device memory (scalars, input buffers at fixed
     * addresses). The CPU backend records {@code work} itself and replay runs it again, which is
     * how the trainer's graph path is tested without a GPU.
     */
    default Graph capture(Runnable work) {
        return new Graph() {
            private boolean closed;

            @Override
            public void replay() {
                if (closed) throw new IllegalStateException("step graph is closed");
                work.run();
            }

            @Override
            public void close() {
                closed = true;
            }
        };
    }

    // ---- checks

    /** True when any element of any tensor is NaN or infinite (synchronises on a GPU). */
    boolean hasNonFinite(Tensor... tensors);

    @Override
    void close();
}
