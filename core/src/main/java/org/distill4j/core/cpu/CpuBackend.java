package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.function.LongConsumer;
import java.util.stream.LongStream;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.BackendChecks;
import org.distill4j.core.Bf16;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.ConvGeometry;
import org.distill4j.core.DType;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Philox;
import org.distill4j.core.Pool2dParams;
import org.distill4j.core.PoolMode;
import org.distill4j.core.Reduction;
import org.distill4j.core.Shapes;
import org.distill4j.core.SpecialFunctions;
import org.distill4j.core.Tensor;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import org.distill4j.core.loss.LossChecks;

/**
 * The reference backend: plain Java over off-heap float32 segments, gemm through oneDNN or
 * OpenBLAS (see CpuBlas and CpuEngine), parallel across rows, planes or channels with the common fork-join pool. Sums
 * accumulate in double. This is the oracle the CUDA backend is tested against, so every op is
 * written to be obviously correct first.
 */
public final class CpuBackend implements Backend {
    /** Work below this many element-operations runs on the calling thread. */
    private static final long PARALLEL_THRESHOLD = 1 << 15;

    private static final CpuBackend INSTANCE = new CpuBackend();

    private CpuBackend() {}

    /** The CPU backend (stateless, shared). */
    public static CpuBackend get() {
        return INSTANCE;
    }

    @Override
    public boolean isHost() {
        return true;
    }

    @Override
    public String name() {
        return "cpu";
    }

    // ---- helpers

    private static float f(MemorySegment s, long i) {
        return s.getAtIndex(JAVA_FLOAT, i);
    }

    private static void set(MemorySegment s, long i, float v) {
        s.setAtIndex(JAVA_FLOAT, i, v);
    }

    /** Runs body(i) for i in [0, n), in parallel when n * costPerItem is large enough to pay for it. */
    private static void parallel(long n, long costPerItem, LongConsumer body) {
        if (n <= 1 || n * costPerItem < PARALLEL_THRESHOLD) {
            for (long i = 0; i < n; i++) body.accept(i);
        } else {
            LongStream.range(0, n).parallel().forEach(body);
        }
    }

    private void f32(String op, Tensor... ts) {
        Shapes.alive(op, ts);
        Shapes.backend(op, this, ts);
        Shapes.dtype(op, DType.F32, ts);
    }

    /** {@link #f32(String, Tensor...)} for one tensor (null passes), without a varargs array per call. */
    private void f32(String op, Tensor t) {
        Shapes.alive(op, t);
        Shapes.backend(op, this, t);
        Shapes.dtype(op, DType.F32, t);
    }

    // ---- memory

    @Override
    public Tensor empty(DType dtype, long... shape) {
        Arena arena = Arena.ofShared();
        try {
            return Tensor.allocated(this, dtype, shape, CpuMemory.allocateUninitialized(arena, Tensor.numel(shape) * dtype.bytes(), 64), arena);
        } catch (RuntimeException | OutOfMemoryError e) {
            arena.close();
            throw e;
        }
    }

    @Override
    public Tensor empty(Arena arena, DType dtype, long... shape) {
        return Tensor.allocated(this, dtype, shape, CpuMemory.allocateUninitialized(arena, Tensor.numel(shape) * dtype.bytes(), 64), null);
    }

    @Override
    public MemorySegment offset(MemorySegment data, long byteOffset, long bytes) {
        return data.asSlice(byteOffset, bytes);
    }

    // ---- blocked activations

    /**
     * Whether the ops below leave a CNN's activations in oneDNN's nChw16c between them
     * ({@link Tensor.Layout}): convolution, batch norm, the elementwise activations and add, and
     * global average pooling read it as it is and write it, so a student's training step no longer
     * reorders every activation into and out of each oneDNN call (about 30 of the CNN kd-step's
     * 210 ms, ONEDNN_VERBOSE at 23da75e; bench/RESULTS.md, sixteenth session). Only with
     * convolutions on oneDNN in its own layouts; -Ddistill4j.onednn.blocked=false turns it off (A/B,
     * and the tests that hold both paths to the same bits).
     */
    static boolean blockedActivations() {
        return BLOCKED_ACTIVATIONS && onednn() && OnednnConv.anyLayout();
    }

    private static volatile boolean BLOCKED_ACTIVATIONS = !"false".equals(System.getProperty("distill4j.onednn.blocked"));

    /** Tests: whether ops may leave activations blocked (where oneDNN runs them); returns what was set. */
    static boolean useBlockedActivations(boolean on) {
        boolean was = BLOCKED_ACTIVATIONS;
        BLOCKED_ACTIVATIONS = on;
        return was;
    }

    private static boolean isBlocked(Tensor t) {
        return t.layout() == Tensor.Layout.NCHW16C;
    }

    /** NCHW16C when {@code blocked}, else ROW_MAJOR: what an op that was asked for either wrote. */
    private static Tensor.Layout blockedIf(boolean blocked) {
        return blocked ? Tensor.Layout.NCHW16C : Tensor.Layout.ROW_MAJOR;
    }

    /** Whether an op may write {@code out} in nChw16c. */
    private static boolean mayWriteBlocked(Tensor out) {
        return out.mayHoldLayout() && blockedActivations();
    }

    /**
     * The layout an elementwise op runs in: the inputs' common one when the output can hold it,
     * else row-major (the inputs' {@link Tensor#data()} then converts any blocked one). Layout does
     * not change an elementwise op's arithmetic, so either way the bits are the same.
     */
    private static Tensor.Layout elementwiseLayout(Tensor a, Tensor b, Tensor c, Tensor out) {
        Tensor.Layout l = a.layout();
        if (l == Tensor.Layout.ROW_MAJOR || (b != null && b.layout() != l) || (c != null && c.layout() != l) || !out.mayHoldLayout()) {
            return Tensor.Layout.ROW_MAJOR;
        }
        return l;
    }

    /** An elementwise op's input in layout l: as it is when l is its layout, else row-major. */
    private static MemorySegment in(Tensor t, Tensor.Layout l) {
        return l == Tensor.Layout.ROW_MAJOR ? t.data() : t.storage();
    }

    /** An output the op overwrites whole, recorded as holding layout l (no conversion of what it held). */
    private static MemorySegment out(Tensor t, Tensor.Layout l) {
        MemorySegment s = t.storage();
        t.setLayout(l);
        return s;
    }

    @Override
    public void toRowMajor(Tensor t) {
        if (t.layout() == Tensor.Layout.ROW_MAJOR) return;
        // Into a scratch buffer with oneDNN's reorder, then back: the tensor keeps its storage (its arena owns it).
        MemorySegment s = t.storage();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment tmp = CpuMemory.allocateUninitialized(arena, t.byteSize(), 64);
            OnednnInferenceConv.toPlain(s, tmp, Math.toIntExact(t.size(0)), Math.toIntExact(t.size(1)), Math.toIntExact(t.size(2)),
                Math.toIntExact(t.size(3)));
            MemorySegment.copy(tmp, 0, s, 0, t.byteSize());
        }
        t.setLayout(Tensor.Layout.ROW_MAJOR);
    }

    @Override
    public float[] read(Tensor t) {
        f32("read", t);
        return t.data().toArray(JAVA_FLOAT);
    }

    @Override
    public void write(Tensor t, float[] values) {
        f32("write", t);
        MemorySegment.copy(values, 0, t.data(), JAVA_FLOAT, 0, values.length);
    }

    @Override
    public long[] readLongs(Tensor t) {
        Shapes.alive("readLongs", t);
        Shapes.dtype("readLongs", DType.I64, t);
        return t.data().toArray(JAVA_LONG);
    }

    @Override
    public void writeLongs(Tensor t, long[] values) {
        Shapes.alive("writeLongs", t);
        Shapes.dtype("writeLongs", DType.I64, t);
        MemorySegment.copy(values, 0, t.data(), JAVA_LONG, 0, values.length);
    }

    @Override
    public void copyFromHost(MemorySegment src, Tensor dst) {
        BackendChecks.copyFromHost(src, dst);
        MemorySegment.copy(src, 0, dst.data(), 0, src.byteSize());
    }

    @Override
    public MemorySegment allocateHost(Arena arena, long bytes) {
        return CpuMemory.allocate(arena, bytes, 64);
    }

    @Override
    public Fence copyFromHostAsync(MemorySegment src, Tensor dst) {
        copyFromHost(src, dst);
        return Fence.DONE;
    }

    @Override
    public void copyToHost(Tensor src, MemorySegment dst) {
        Shapes.alive("copyToHost", src);
        MemorySegment.copy(src.data(), 0, dst, 0, src.byteSize());
    }

    @Override
    public void copy(Tensor src, Tensor dst) {
        BackendChecks.copy(src, dst);
        MemorySegment.copy(src.data(), 0, dst.data(), 0, src.byteSize());
    }

    @Override
    public void zero(Tensor t) {
        Shapes.alive("zero", t);
        out(t, Tensor.Layout.ROW_MAJOR).fill((byte) 0); // all zero bytes in any layout
    }

    @Override
    public void synchronize() {
        // Every CPU op has finished when it returns.
    }

    // ---- gemm

    @Override
    public void gemm(boolean transA, boolean transB, float alpha, Tensor a, Tensor b, float beta, Tensor c) {
        f32("gemm", a, b, c);
        GemmShape g = GemmShape.of(transA, transB, a, b, c);
        int lda = transA ? g.m() : g.k(), ldb = transB ? g.k() : g.n();
        if (g.batch() == 1 || g.k() == 0) {
            for (int i = 0; i < g.batch(); i++) {
                MemorySegment as = a.data().asSlice((long) i * g.m() * g.k() * 4, (long) g.m() * g.k() * 4);
                MemorySegment bs = b.data().asSlice((long) i * g.k() * g.n() * 4, (long) g.k() * g.n() * 4);
                MemorySegment cs = c.data().asSlice((long) i * g.m() * g.n() * 4, (long) g.m() * g.n() * 4);
                CpuBlas.sgemm(transA, transB, g.m(), g.n(), g.k(), alpha, as, lda, bs, ldb, beta, cs, g.n());
            }
        } else {
            // Contiguous batches: one strided-batched call (one oneDNN primitive for the whole batch).
            CpuBlas.sgemmStridedBatched(transA, transB, g.m(), g.n(), g.k(), alpha, a.data(), lda, (long) g.m() * g.k(), b.data(), ldb,
                (long) g.k() * g.n(), beta, c.data(), g.n(), (long) g.m() * g.n(), g.batch());
        }
    }

    /**
     * One gemm per batch entry on sliced segments: OpenBLAS (or the Java fallback) for F32; for
     * BF16 operands a plain loop that widens each element exactly to float and accumulates in
     * float, as cuBLAS's fp32 compute does (the oracle, not a fast path).
     */
    @Override
    public void gemmStridedBatched(boolean transA, boolean transB, int m, int n, int k, float alpha,
                                   Tensor a, long offA, int lda, long strideA, Tensor b, long offB, int ldb, long strideB,
                                   float beta, Tensor c, long offC, int ldc, long strideC, int batch) {
        BackendChecks.gemmStridedBatched(this, transA, transB, m, n, k, a, offA, lda, strideA, b, offB, ldb, strideB, c, offC, ldc, strideC, batch);
        if (m == 0 || n == 0) return;
        int aRows = transA ? k : m, bRows = transB ? n : k;
        if (a.dtype() == DType.F32 && k > 0) {
            // All entries in one call: oneDNN runs the batch as one primitive, the other engines loop.
            CpuBlas.sgemmStridedBatched(transA, transB, m, n, k, alpha, a.data().asSlice(offA * 4), lda, strideA, b.data().asSlice(offB * 4), ldb,
                strideB, beta, c.data().asSlice(offC * 4), ldc, strideC, batch);
            return;
        }
        for (int i = 0; i < batch; i++) {
            long ai = offA + i * strideA, bi = offB + i * strideB, ci = offC + i * strideC; // element offsets of this batch entry
            MemorySegment cs = c.data().asSlice(ci * 4, ((long) (m - 1) * ldc + n) * 4);
            if (a.dtype() == DType.F32) {
                MemorySegment as = k == 0 ? MemorySegment.NULL : a.data().asSlice(ai * 4, ((long) (aRows - 1) * lda + (transA ? m : k)) * 4);
                MemorySegment bs = k == 0 ? MemorySegment.NULL : b.data().asSlice(bi * 4, ((long) (bRows - 1) * ldb + (transB ? k : n)) * 4);
                if (k == 0) {
                    for (int r = 0; r < m; r++) for (int j = 0; j < n; j++) { // C = beta C: nothing to multiply
                        long at = (long) r * ldc + j;
                        cs.setAtIndex(JAVA_FLOAT, at, beta == 0f ? 0f : beta * cs.getAtIndex(JAVA_FLOAT, at));
                    }
                } else {
                    CpuBlas.sgemm(transA, transB, m, n, k, alpha, as, lda, bs, ldb, beta, cs, ldc);
                }
            } else {
                MemorySegment ad = a.data(), bd = b.data();
                for (int r = 0; r < m; r++) {
                    for (int j = 0; j < n; j++) {
                        float sum = 0f;
                        for (int p = 0; p < k; p++) {
                            float av = Bf16.toFloat(ad.getAtIndex(JAVA_SHORT, ai + (transA ? (long) p * lda + r : (long) r * lda + p)));
                            float bv = Bf16.toFloat(bd.getAtIndex(JAVA_SHORT, bi + (transB ? (long) j * ldb + p : (long) p * ldb + j)));
                            sum += av * bv;
                        }
                        long at = (long) r * ldc + j;
                        cs.setAtIndex(JAVA_FLOAT, at, alpha * sum + (beta == 0f ? 0f : beta * cs.getAtIndex(JAVA_FLOAT, at)));
                    }
                }
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

    private void biasAdd(String op, Tensor y, Tensor bias, boolean channelAxis) {
        f32(op, y, bias);
        long[] l = Shapes.biasLayout(op, y, bias, channelAxis);
        MemorySegment ys = y.data(), bs = bias.data();
        if (l[2] == 1) { // [N, F]: one row at a time, contiguous (vectorisable) over the features
            parallel(l[0], l[1], n -> CpuKernels.biasAddRows(ys, bs, n, n + 1, l[1]));
            return;
        }
        parallel(l[0] * l[1], l[2], oc -> CpuKernels.biasAddPlanes(ys, bs, oc, oc + 1, l[1], l[2]));
    }

    /** Per-thread blocks of four rows for {@link #biasGrad}'s column blocks (256 floats each). */
    private static final ThreadLocal<float[]> BIAS_GRAD_ROWS = ThreadLocal.withInitial(() -> new float[4 * 256]);

    private void biasGrad(String op, Tensor dy, Tensor dbias, boolean accumulate, boolean channelAxis) {
        f32(op, dy, dbias);
        long[] l = Shapes.biasLayout(op, dy, dbias, channelAxis);
        MemorySegment ds = dy.data(), bs = dbias.data();
        if (l[2] == 1) { // [N, F]: blocks of columns, each summed down the rows with contiguous reads
            long rows = l[0], features = l[1], block = 256;
            parallel((features + block - 1) / block, rows * block, k -> {
                int from = (int) (k * block), width = (int) (Math.min(features, from + block) - from);
                // Rows copied into a float[] block, four at a time: C2 vectorises the float -> double adds over arrays, not over
                // the segment (JFR: this loop was about 1 ms of the mlp-1024 kd-step's 65; bench/RESULTS.md, sixteenth session).
                // Each column still adds its rows one by one, in order: the same bits as before.
                float[] r = BIAS_GRAD_ROWS.get();
                double[] sum = new double[width];
                long n = 0;
                for (; n + 3 < rows; n += 4) {
                    for (int q = 0; q < 4; q++) MemorySegment.copy(ds, JAVA_FLOAT, ((n + q) * features + from) * Float.BYTES, r, q * 256, width);
                    for (int j = 0; j < width; j++) sum[j] = (((sum[j] + r[j]) + r[256 + j]) + r[512 + j]) + r[768 + j];
                }
                for (; n < rows; n++) {
                    MemorySegment.copy(ds, JAVA_FLOAT, (n * features + from) * Float.BYTES, r, 0, width);
                    for (int j = 0; j < width; j++) sum[j] += r[j];
                }
                for (int j = 0; j < width; j++) set(bs, from + j, (float) (accumulate ? f(bs, from + j) + sum[j] : sum[j]));
            });
            return;
        }
        parallel(l[1], l[0] * l[2], c -> {
            double sum = 0;
            for (long o = 0; o < l[0]; o++) {
                long base = (o * l[1] + c) * l[2];
                for (long i = 0; i < l[2]; i++) sum += f(ds, base + i);
            }
            set(bs, c, (float) (accumulate ? f(bs, c) + sum : sum));
        });
    }

    // ---- activations

    private static final double SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
    private static final double INV_SQRT_2 = 1 / Math.sqrt(2);
    private static final double INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

    static double activate(Activation kind, double param, double x) {
        return switch (kind) {
            case RELU -> x > 0 ? x : 0;
            case LEAKY_RELU -> x > 0 ? x : param * x;
            case GELU -> 0.5 * x * SpecialFunctions.erfc(-x * INV_SQRT_2);
            case GELU_TANH -> 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
            case TANH -> Math.tanh(x);
            case SIGMOID -> 1 / (1 + Math.exp(-x));
        };
    }

    static double derivative(Activation kind, double param, double x, double y) {
        return switch (kind) {
            case RELU -> x > 0 ? 1 : 0;
            case LEAKY_RELU -> x > 0 ? 1 : param;
            case GELU -> 0.5 * SpecialFunctions.erfc(-x * INV_SQRT_2) + x * INV_SQRT_2PI * Math.exp(-0.5 * x * x);
            case GELU_TANH -> {
                double t = Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x));
                yield 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x);
            }
            case TANH -> 1 - y * y;
            case SIGMOID -> y * (1 - y);
        };
    }

    @Override
    public void activation(Activation kind, float param, Tensor x, Tensor y) {
        f32("activation(" + kind + ")", x, y);
        Shapes.same("activation(" + kind + ")", x, y);
        Tensor.Layout l = elementwiseLayout(x, null, null, y); // elementwise: blocked activations stay blocked
        MemorySegment xs = in(x, l), ys = out(y, l);
        if (CpuKernels.activationRunsWhole(kind)) { // oneDNN's GELU: one call over the whole tensor, on its own threads
            CpuKernels.activation(kind, param, xs, ys, 0, x.numel());
            return;
        }
        if (kind == Activation.RELU && CpuKernels.NATIVE_RELU) {
            parallelIndex(x.numel(), NATIVE_BLOCK, 1, (from, to) -> CpuKernels.activation(kind, param, xs, ys, from, to));
            return;
        }
        long c = x.cols();
        parallel(x.rows(), kind == Activation.RELU ? c : c * 8, r -> CpuKernels.activation(kind, param, xs, ys, r * c, (r + 1) * c));
    }

    @Override
    public void activationBackward(Activation kind, float param, Tensor x, Tensor y, Tensor dy, Tensor dx) {
        String op = "activationBackward(" + kind + ")";
        f32(op, x, y, dy, dx);
        Shapes.same(op, x, dy);
        Shapes.same(op, y, dy);
        Shapes.same(op, dx, dy);
        Tensor.Layout l = elementwiseLayout(x, y, dy, dx);
        MemorySegment xs = in(x, l), ys = in(y, l), dys = in(dy, l), dxs = out(dx, l);
        if ((kind == Activation.GELU || kind == Activation.GELU_TANH) && OnednnEltwise.geluBackward(kind == Activation.GELU_TANH, xs, dys, dxs, x.numel())) {
            return;
        }
        if (kind == Activation.RELU) {
            // dx = x > 0 ? dy : +0, without a branch: the sign of x is random, and the mispredicted branch made this loop 5x slower
            // than the forward (11.5 ms for 4M elements). x > 0 exactly when its bits t = bits(x) - 1 lie in [0, 0x7F800000)
            // (positive finite or +inf; NaN and both zeros excluded): the mask keeps dy's bits there and gives +0 elsewhere.
            if (CpuKernels.NATIVE_RELU) {
                parallelIndex(x.numel(), NATIVE_BLOCK, 1, (from, to) -> org.distill4j.bindings.cpu.distill4j_cpu_h.d4j_cpu_relu_backward(xs, dys, dxs, from, to));
                return;
            }
            parallel(x.rows(), x.cols(), r -> {
                long base = r * x.cols();
                for (long i = base; i < base + x.cols(); i++) {
                    int t = Float.floatToRawIntBits(f(xs, i)) - 1;
                    int keep = ~(t >> 31) & ((t - 0x7F800000) >> 31);
                    set(dxs, i, Float.intBitsToFloat(Float.floatToRawIntBits(f(dys, i)) & keep));
                }
            });
            return;
        }
        parallel(x.rows(), x.cols() * 8, r -> {
            long base = r * x.cols();
            for (long i = base; i < base + x.cols(); i++) {
                set(dxs, i, (float) (derivative(kind, param, f(xs, i), f(ys, i)) * f(dys, i)));
            }
        });
    }

    // ---- softmax

    private void rowwise(String op, Tensor x, Tensor y, boolean log) {
        f32(op, x, y);
        Shapes.same(op, x, y);
        MemorySegment xs = x.data(), ys = y.data();
        long c = x.cols();
        parallel(x.rows(), c * 4, r -> {
            long base = r * c;
            double max = Double.NEGATIVE_INFINITY;
            for (long i = base; i < base + c; i++) max = Math.max(max, f(xs, i));
            // One exp per element: softmax keeps exp(x - max) in y and rescales it; log-softmax
            // only needs the sum. (y may alias x: each element is read before it is written.)
            double sum = 0;
            for (long i = base; i < base + c; i++) {
                double e = Math.exp(f(xs, i) - max);
                sum += e;
                if (!log) set(ys, i, (float) e);
            }
            if (log) {
                double shift = max + Math.log(sum);
                for (long i = base; i < base + c; i++) set(ys, i, (float) (f(xs, i) - shift));
            } else {
                float inv = (float) (1 / sum);
                for (long i = base; i < base + c; i++) set(ys, i, f(ys, i) * inv);
            }
        });
    }

    @Override
    public void softmax(Tensor x, Tensor y) {
        rowwise("softmax", x, y, false);
    }

    @Override
    public void logSoftmax(Tensor x, Tensor y) {
        rowwise("logSoftmax", x, y, true);
    }

    @Override
    public void softmaxBackward(Tensor y, Tensor dy, Tensor dx) {
        f32("softmaxBackward", y, dy, dx);
        Shapes.same("softmaxBackward", y, dy);
        Shapes.same("softmaxBackward", y, dx);
        MemorySegment ys = y.data(), dys = dy.data(), dxs = dx.data();
        long c = y.cols();
        parallel(y.rows(), c * 3, r -> {
            long base = r * c;
            double dot = 0;
            for (long i = base; i < base + c; i++) dot += (double) f(dys, i) * f(ys, i);
            for (long i = base; i < base + c; i++) set(dxs, i, (float) (f(ys, i) * (f(dys, i) - dot)));
        });
    }

    @Override
    public void logSoftmaxBackward(Tensor y, Tensor dy, Tensor dx) {
        f32("logSoftmaxBackward", y, dy, dx);
        Shapes.same("logSoftmaxBackward", y, dy);
        Shapes.same("logSoftmaxBackward", y, dx);
        MemorySegment ys = y.data(), dys = dy.data(), dxs = dx.data();
        long c = y.cols();
        parallel(y.rows(), c * 3, r -> {
            long base = r * c;
            double sum = 0;
            for (long i = base; i < base + c; i++) sum += f(dys, i);
            for (long i = base; i < base + c; i++) set(dxs, i, (float) (f(dys, i) - Math.exp(f(ys, i)) * sum));
        });
    }

    // ---- cross-entropy

    @Override
    public void crossEntropy(Tensor logits, Tensor labels, int ignoreIndex, float labelSmoothing, Tensor loss, Tensor gradLogits) {
        String op = "crossEntropy";
        BackendChecks.crossEntropy(this, logits, labels, labelSmoothing, loss, gradLogits); // allocates nothing (CpuBackendAllocationTest)
        long n = logits.size(0), c = logits.size(1);
        MemorySegment xs = logits.data(), ls = labels.data();
        long counted = 0;
        for (long r = 0; r < n; r++) {
            long y = ls.getAtIndex(JAVA_LONG, r);
            if (y == ignoreIndex) continue;
            if (y < 0 || y >= c) throw new IllegalArgumentException(op + ": label " + y + " at row " + r + " is outside [0, " + c + ")");
            counted++;
        }
        double eps = labelSmoothing, scale = counted == 0 ? 0 : 1.0 / counted;
        MemorySegment gs = gradLogits == null ? null : gradLogits.data();
        // Rows in fixed chunks of about PARALLEL_THRESHOLD element-operations (c logits x 4 passes a
        // row), each summing its rows' losses in row order, then the chunks in order: the same
        // answer on any machine, and one chunk (the common small case) is a plain loop that
        // allocates nothing, not even a per-row loss array.
        long chunkRows = Math.max(1, PARALLEL_THRESHOLD / Math.max(1, c * 4)), chunks = (n + chunkRows - 1) / chunkRows;
        double total;
        if (chunks <= 1) {
            total = crossEntropyRows(xs, ls, gs, 0, n, c, ignoreIndex, eps, scale);
        } else {
            double[] chunkLoss = new double[Shapes.toInt(op, chunks)];
            parallel(chunks, chunkRows * c * 4, k -> chunkLoss[(int) k] = crossEntropyRows(xs, ls, gs, k * chunkRows, Math.min(n, (k + 1) * chunkRows), c,
                ignoreIndex, eps, scale));
            total = 0;
            for (double l : chunkLoss) total += l;
        }
        set(loss.data(), 0, counted == 0 ? Float.NaN : (float) (total * scale));
    }

    /** Rows [from, to) of the cross-entropy: the sum of their losses (unscaled); writes their gradient (times scale) when gs is not null. */
    private static double crossEntropyRows(MemorySegment xs, MemorySegment ls, MemorySegment gs, long from, long to, long c, int ignoreIndex, double eps,
                                           double scale) {
        double total = 0;
        for (long r = from; r < to; r++) {
            long y = ls.getAtIndex(JAVA_LONG, r);
            long base = r * c;
            if (y == ignoreIndex) {
                if (gs != null) for (long i = base; i < base + c; i++) set(gs, i, 0f);
                continue;
            }
            double max = Double.NEGATIVE_INFINITY;
            for (long i = base; i < base + c; i++) max = Math.max(max, f(xs, i));
            double sum = 0, sumZ = 0;
            for (long i = base; i < base + c; i++) {
                double z = f(xs, i) - max;
                sum += Math.exp(z);
                sumZ += z;
            }
            double logSum = Math.log(sum);
            double nllTarget = -((f(xs, base + y) - max) - logSum);
            double nllMean = -(sumZ / c - logSum);
            total += (1 - eps) * nllTarget + eps * nllMean;
            if (gs != null) {
                for (long i = base; i < base + c; i++) {
                    double p = Math.exp(f(xs, i) - max - logSum);
                    double target = (i - base == y ? 1 - eps : 0) + eps / c;
                    set(gs, i, (float) ((p - target) * scale));
                }
            }
        }
        return total;
    }

    // ---- the fused distillation loss

    /**
     * The fused loss on the float fast path (our C kernel, vectorised, {@link #fastLossPath()}), or
     * on the double oracle when the kernel library is missing.
     */
    @Override
    public void distillationLoss(Tensor student, Tensor teacher, Tensor labels, DistillationLoss config, long normalizer, Tensor loss, Tensor grad) {
        distillationLoss(student, teacher, labels, config, normalizer, loss, grad, false);
    }

    /**
     * {@link #distillationLoss} on the oracle alone: every divergence in double, one task a row (the
     * reference the CUDA kernels and the fast path are tested against, and what {@code distill loss}
     * computes on the CPU for users checking numerics against their own code).
     */
    public void referenceDistillationLoss(Tensor student, Tensor teacher, Tensor labels, DistillationLoss config, long normalizer, Tensor loss,
                                          Tensor grad) {
        distillationLoss(student, teacher, labels, config, normalizer, loss, grad, true);
    }

    /** Which implementation computes the loss here: "float fast path (avx512)" or why it is the double oracle. */
    public static String fastLossPath() {
        return CpuFastDistillationLoss.available() ? "float fast path (" + CpuFastDistillationLoss.isa() + ")"
            : "double oracle only: " + CpuFastDistillationLoss.unavailableReason();
    }

    private void distillationLoss(Tensor student, Tensor teacher, Tensor labels, DistillationLoss config, long normalizer, Tensor loss, Tensor grad,
                                  boolean reference) {
        LossChecks.distillation(this, student, teacher, labels, config, normalizer, loss, grad);
        MemorySegment s = student.data(), t = teacher.data(), y = labels == null ? null : labels.data(), g = grad == null ? null : grad.data();
        int rows = Shapes.toInt("distillationLoss", student.size(0)), cols = Shapes.toInt("distillationLoss", student.size(1));
        boolean bf16 = student.dtype() == DType.BF16;
        boolean fast = !reference && CpuFastDistillationLoss.takes(s, t, y, g);
        if (config.effectiveDivergence() == Divergence.REVERSE_KL || config.effectiveDivergence() == Divergence.MSE) {
            // -inf teacher logits (a top-k teacher) make reverse KL infinite and MSE undefined:
            // refused before any gradient is written (on the fast path in one vectorised C pass, 10 ms
            // element by element in Java at 512 x 32000)
            long i = fast ? CpuFastDistillationLoss.firstNegativeInfinity(t, teacher.numel(), bf16) : firstNegativeInfinity(t, teacher.numel(), bf16);
            if (i >= 0) {
                throw new IllegalArgumentException("distillationLoss: " + config.effectiveDivergence() + " needs the teacher's full logits; "
                    + "element " + i + " is -inf (top-k teachers support kl and jsd)");
            }
        }
        double[] r = fast
            ? CpuFastDistillationLoss.compute(s, t, y, rows, cols, config, normalizer, g, bf16)
            : CpuDistillationLoss.compute(s, t, y, rows, cols, config, normalizer, g, bf16);
        MemorySegment ls = loss.data();
        for (int i = 0; i < loss.numel(); i++) set(ls, i, (float) r[i]);
    }

    /** The index of the first -inf among x's n logits, or -1 (the oracle's path: Java, element by element). */
    private static long firstNegativeInfinity(MemorySegment x, long n, boolean bf16) {
        for (long i = 0; i < n; i++) if (CpuDistillationLoss.load(x, i, bf16) == Float.NEGATIVE_INFINITY) return i;
        return -1;
    }

    @Override
    public void averageTeachers(List<Tensor> teacherLogits, float temperature, Tensor out) {
        LossChecks.averageTeachers(this, teacherLogits, temperature, out);
        long c = out.cols();
        int k = teacherLogits.size();
        MemorySegment os = out.data();
        MemorySegment[] ts = teacherLogits.stream().map(Tensor::data).toArray(MemorySegment[]::new);
        double invT = 1.0 / temperature, logK = Math.log(k);
        parallel(out.rows(), c * k * 3, r -> {
            long base = r * c;
            double[] acc = new double[(int) c];
            java.util.Arrays.fill(acc, Double.NEGATIVE_INFINITY);
            for (MemorySegment t : ts) {
                double max = Double.NEGATIVE_INFINITY, sum = 0;
                for (long i = 0; i < c; i++) max = Math.max(max, f(t, base + i) * invT);
                for (long i = 0; i < c; i++) sum += Math.exp(f(t, base + i) * invT - max);
                double lse = max + Math.log(sum);
                for (int i = 0; i < c; i++) acc[i] = CpuDistillationLoss.logAddExp(acc[i], f(t, base + i) * invT - lse);
            }
            for (int i = 0; i < c; i++) set(os, base + i, (float) (temperature * (acc[i] - logK)));
        });
    }

    @Override
    public void scatterTopK(Tensor indices, Tensor values, Tensor dense) {
        LossChecks.topK(this, indices, values, dense);
        MemorySegment is = indices.data(), vs = values.data(), ds = dense.data();
        long k = indices.size(1), c = dense.size(1);
        for (long i = 0; i < dense.numel(); i++) set(ds, i, Float.NEGATIVE_INFINITY);
        for (long r = 0; r < indices.size(0); r++) for (long j = 0; j < k; j++) {
            long idx = is.getAtIndex(JAVA_LONG, r * k + j);
            if (idx < 0 || idx >= c) throw new IllegalArgumentException("scatterTopK: index " + idx + " at row " + r + " is outside [0, " + c + ")");
            set(ds, r * c + idx, f(vs, r * k + j));
        }
    }

    @Override
    public void gatherRows(Tensor table, Tensor indices, Tensor out) {
        LossChecks.gatherRows(this, table, indices, out);
        long cols = out.size(1), tableRows = table.size(0);
        MemorySegment ts = table.data(), is = indices.data(), os = out.data();
        boolean bf16 = table.dtype() == DType.BF16;
        for (long r = 0; r < out.size(0); r++) {
            long src = is.getAtIndex(JAVA_LONG, r);
            if (src < 0 || src >= tableRows) {
                throw new IllegalArgumentException("gatherRows: index " + src + " at position " + r + " is outside [0, " + tableRows + ")");
            }
        }
        // The table is often a memory-mapped file: it is read here only through bulk copies and this
        // method's own accessor, never through f()/set(), whose inlined copies in every other op would
        // otherwise see a second segment class and lose their fast path (measured: 4-5x slower steps).
        parallel(out.size(0), cols, r -> {
            long src = is.getAtIndex(JAVA_LONG, r);
            if (!bf16) {
                MemorySegment.copy(ts, src * cols * Float.BYTES, os, r * cols * Float.BYTES, cols * Float.BYTES);
                return;
            }
            for (long c = 0; c < cols; c++) {
                os.setAtIndex(JAVA_FLOAT, r * cols + c, Bf16.toFloat(ts.getAtIndex(JAVA_SHORT, src * cols + c)));
            }
        });
    }

    @Override
    public void incrementCounter(Tensor counter) {
        BackendChecks.incrementCounter(this, counter);
        counter.data().set(JAVA_LONG, 0, counter.data().get(JAVA_LONG, 0) + 1);
    }

    // ---- reductions

    @Override
    public void reduceRows(Reduction kind, Tensor x, Tensor out) {
        BackendChecks.reduceRows(this, x, out);
        MemorySegment xs = x.data(), os = out.data();
        long c = x.cols();
        parallel(x.rows(), c, r -> {
            double acc = kind == Reduction.MAX ? Double.NEGATIVE_INFINITY : 0;
            for (long i = r * c; i < (r + 1) * c; i++) acc = kind == Reduction.MAX ? Math.max(acc, f(xs, i)) : acc + f(xs, i);
            set(os, r, (float) (kind == Reduction.MEAN ? acc / c : acc));
        });
    }

    @Override
    public void reduceCols(Reduction kind, Tensor x, Tensor out) {
        BackendChecks.reduceCols(this, x, out);
        MemorySegment xs = x.data(), os = out.data();
        long c = x.cols(), rows = x.rows();
        parallel(c, rows, j -> {
            double acc = kind == Reduction.MAX ? Double.NEGATIVE_INFINITY : 0;
            for (long r = 0; r < rows; r++) acc = kind == Reduction.MAX ? Math.max(acc, f(xs, r * c + j)) : acc + f(xs, r * c + j);
            set(os, j, (float) (kind == Reduction.MEAN ? acc / rows : acc));
        });
    }

    // ---- elementwise

    /**
     * Checks an elementwise op and runs {@code body} over chunks of 16384 elements. Each op passes
     * its own lambda with its own loop, so the loop is monomorphic and vectorised; only the
     * per-chunk call varies (a shared loop calling a per-element lambda was megamorphic in training,
     * a switch inside one lambda measured 20-30% slower on add).
     */
    private void elementwise(String op, Tensor a, Tensor b, Tensor out, IndexRange body) {
        elementwiseChecks(op, a, b, out);
        elementwise(a.numel(), body);
    }

    private void elementwiseChecks(String op, Tensor a, Tensor b, Tensor out) {
        f32(op, a, b, out);
        Shapes.same(op, a, b);
        Shapes.same(op, a, out);
    }

    /** body over [0, n) in chunks, in parallel. */
    private static void elementwise(long n, IndexRange body) {
        long chunk = 1 << 14;
        parallel((n + chunk - 1) / chunk, chunk, k -> body.run(k * chunk, Math.min(n, (k + 1) * chunk)));
    }

    @Override
    public void axpy(float alpha, Tensor x, Tensor y) {
        MemorySegment xs = x.data(), ys = y.data();
        elementwise("axpy", x, y, y, (lo, hi) -> {
            for (long i = lo; i < hi; i++) set(ys, i, Math.fma(alpha, f(xs, i), f(ys, i)));
        });
    }

    @Override
    public void scale(float alpha, Tensor x) {
        MemorySegment xs = x.data();
        elementwise("scale", x, x, x, (lo, hi) -> {
            for (long i = lo; i < hi; i++) set(xs, i, alpha * f(xs, i));
        });
    }

    @Override
    public void mul(Tensor a, Tensor b, Tensor out) {
        MemorySegment as = a.data(), bs = b.data(), os = out.data();
        elementwise("mul", a, b, out, (lo, hi) -> {
            for (long i = lo; i < hi; i++) set(os, i, f(as, i) * f(bs, i));
        });
    }

    @Override
    public void add(Tensor a, Tensor b, Tensor out) {
        elementwiseChecks("add", a, b, out);
        Tensor.Layout l = elementwiseLayout(a, b, null, out); // a residual block's sum stays blocked
        MemorySegment as = in(a, l), bs = in(b, l), os = out(out, l);
        elementwise(a.numel(), (lo, hi) -> CpuKernels.add(as, bs, os, lo, hi));
    }

    @Override
    public void fill(Tensor x, float value) {
        f32("fill", x);
        MemorySegment xs = x.data();
        if (Float.floatToRawIntBits(value) == 0) { // +0.0f is all zero bytes (-0.0f is not): memset
            xs.fill((byte) 0);
            return;
        }
        // Range loops over the segment itself (no view per element), in chunks as elementwise ops.
        long n = x.numel(), chunk = 1 << 14;
        parallel((n + chunk - 1) / chunk, chunk, k -> {
            for (long i = k * chunk, end = Math.min(n, (k + 1) * chunk); i < end; i++) set(xs, i, value);
        });
    }

    // ---- classification

    private static long argmaxRow(MemorySegment xs, long base, long c) {
        long best = 0;
        float bestValue = f(xs, base);
        for (long i = 1; i < c; i++) {
            float v = f(xs, base + i);
            if (v > bestValue || (Float.isNaN(v) && !Float.isNaN(bestValue))) {
                best = i;
                bestValue = v;
            }
        }
        return best;
    }

    @Override
    public void argmax(Tensor x, Tensor out) {
        BackendChecks.argmax(this, x, out);
        MemorySegment xs = x.data(), os = out.data();
        long c = x.cols();
        parallel(x.rows(), c, r -> os.setAtIndex(JAVA_LONG, r, argmaxRow(xs, r * c, c)));
    }

    @Override
    public void correctCount(Tensor logits, Tensor labels, int ignoreIndex, Tensor out) {
        BackendChecks.correctCount(this, logits, labels, out);
        MemorySegment xs = logits.data(), ls = labels.data();
        long c = logits.cols(), count = 0;
        for (long r = 0; r < logits.size(0); r++) {
            long y = ls.getAtIndex(JAVA_LONG, r);
            if (y != ignoreIndex && argmaxRow(xs, r * c, c) == y) count++;
        }
        out.data().setAtIndex(JAVA_LONG, 0, out.data().getAtIndex(JAVA_LONG, 0) + count);
    }

    // ---- dropout and random

    @Override
    public void dropout(float p, long seed, long offset, Tensor x, Tensor y) {
        BackendChecks.dropout(this, p, x, y);
        float scale = 1 / (1 - p);
        MemorySegment ys = y.data();
        MemorySegment xs = x.data();
        elementwise("dropout", x, y, y, (lo, hi) -> MemorySegment.copy(xs, lo * Float.BYTES, ys, lo * Float.BYTES, (hi - lo) * Float.BYTES));
        parallelIndex(y.numel(), (lo, hi) -> {
            for (long i = lo; i < hi; i++) set(ys, i, Philox.uniform(seed, offset + i) >= p ? f(ys, i) * scale : 0f);
        });
    }

    @Override
    public void dropoutBackward(float p, long seed, long offset, Tensor dy, Tensor dx) {
        dropout(p, seed, offset, dy, dx); // the same mask and scale: d(x * m / (1 - p))/dx = m / (1 - p)
    }

    @Override
    public void uniform(Tensor x, float low, float high, long seed, long offset) {
        f32("uniform", x);
        MemorySegment xs = x.data();
        parallelIndex(x.numel(), (lo, hi) -> {
            for (long i = lo; i < hi; i++) set(xs, i, low + (high - low) * Philox.uniform(seed, offset + i));
        });
    }

    /** The body of a parallel loop over [lo, hi): one call per chunk, so the per-element loop inside it is monomorphic and inlined. */
    private interface IndexRange { void run(long lo, long hi); }

    private static void parallelIndex(long n, IndexRange body) {
        parallelIndex(n, 1 << 12, 8, body);
    }

    /** Elements a block for a native elementwise kernel: one downcall each (64Ki). */
    private static final long NATIVE_BLOCK = 1 << 16;

    /** Elements [0, n) in blocks of {@code chunk}, each costing {@code costPerElement}, in parallel when large. */
    private static void parallelIndex(long n, long chunk, long costPerElement, IndexRange body) {
        parallel((n + chunk - 1) / chunk, chunk * costPerElement, k -> body.run(k * chunk, Math.min(n, (k + 1) * chunk)));
    }

    // ---- convolution: im2col + gemm


    /** dx image += col2im(dcol). */
    private static void col2im(MemorySegment dcol, ConvGeometry g, Conv2dParams p, MemorySegment dx, long img, int c0, int c1) {
        for (int ci = c0; ci < c1; ci++) for (int u = 0; u < g.r(); u++) for (int v = 0; v < g.s(); v++) {
            long row = ((long) (ci * g.r() + u) * g.s() + v) * g.ohw();
            for (int i = 0; i < g.oh(); i++) {
                int yy = i * p.strideH() - p.padH() + u;
                if (yy < 0 || yy >= g.h()) continue;
                for (int j = 0; j < g.ow(); j++) {
                    int xx = j * p.strideW() - p.padW() + v;
                    if (xx < 0 || xx >= g.w()) continue;
                    long at = img + ((long) ci * g.h() + yy) * g.w() + xx;
                    set(dx, at, f(dx, at) + f(dcol, row + (long) i * g.ow() + j));
                }
            }
        }
    }

    /**
     * Whether convolution runs on oneDNN's primitives: the engine is oneDNN (which CpuBlas resolves
     * once per process), unless -Ddistill4j.onednn.conv=false (im2col + oneDNN's gemm, the path
     * before; for A/B benchmarks).
     */
    private static boolean onednn() {
        return CONV_ON_ONEDNN && CpuBlas.engine() == CpuEngine.ONEDNN;
    }

    private static final boolean CONV_ON_ONEDNN = !"false".equals(System.getProperty("distill4j.onednn.conv"));

    /** Whether pooling runs on oneDNN: the engine is oneDNN, unless -Ddistill4j.onednn.pool=false (for the benchmark's A/B). */
    private static boolean onednnPool() {
        return POOL_ON_ONEDNN && CpuBlas.engine() == CpuEngine.ONEDNN;
    }

    private static final boolean POOL_ON_ONEDNN = !"false".equals(System.getProperty("distill4j.onednn.pool"));

    /**
     * Whether a training batch norm (forward and backward) of x [N, C, H, W] runs on oneDNN
     * ({@link OnednnBatchNorm}): the engine is oneDNN, unless -Ddistill4j.onednn.bnorm=false, and
     * only where oneDNN measured faster than our loops (2 OpenMP threads, docs/backends.md):
     * BatchNorm2d inputs with C a multiple of 16 (its channel block: no padded channels), at least
     * two blocks, and N H W at most 65,536. At [256, 32, 16, 16] its forward ran 1.4-2.4x faster
     * and its backward about even (median 0.98x our time); with one block (C = 16) at every size
     * tried, and at [256, 32, 32, 32], it took 1.2-8x our time on this loaded 2-core machine (its
     * threads then split a block's statistics over N, likely with barriers). Its eval
     * forward and its plain-nchw kernel lost on every shape measured, so those, and BatchNorm1d
     * (not measured), stay on our loops.
     */
    private static boolean onednnBatchNorm(Tensor x, long n, long channels, long inner) {
        return BNORM_ON_ONEDNN && CpuBlas.engine() == CpuEngine.ONEDNN && x.rank() == 4 && channels % 16 == 0 && channels >= 32 && n * inner <= 65_536;
    }

    private static final boolean BNORM_ON_ONEDNN = !"false".equals(System.getProperty("distill4j.onednn.bnorm"));

    /** Whether convolutions run on oneDNN's primitives here (the oneDNN engine, not turned off): a plan's bf16 step rounds x for them first. */
    public static boolean onednnConvolutions() {
        return onednn();
    }

    /**
     * The inference plan's convolution (the Predictor's; arguments checked when the plan was
     * compiled): y = conv(x, w) (+ bias [k] when not null) for g.n() images, on the oneDNN
     * primitives {@link #conv2d(Tensor, Tensor, Tensor, Conv2dParams, Tensor)} runs, so a plan's
     * results equal Model.forward's bit for bit. False, having done nothing, when convolution is not
     * on oneDNN here or oneDNN declines: the caller runs im2col + gemm (the path conv2d falls back to).
     */
    public static boolean onednnConv2d(MemorySegment x, MemorySegment w, MemorySegment bias, MemorySegment y, ConvGeometry g, Conv2dParams p) {
        return onednn() && OnednnConv.forward(x, w, bias, y, g, p);
    }

    /**
     * The bf16 inference plan's convolution: y float32 = conv(x, w) (+ bias [k] float32 when not
     * null) with x [g.n(), c, h, w] and w [k, c, r, s] bfloat16 (raw bits; the caller rounded them),
     * products summed in float32, on oneDNN's bf16 convolution. False, having done nothing, when
     * convolution is not on oneDNN here or oneDNN has no bf16 convolution for it: the caller runs
     * im2col + {@link CpuBlas#gemmBf16} (the same recipe).
     */
    public static boolean onednnConv2dBf16(MemorySegment x, MemorySegment w, MemorySegment bias, MemorySegment y, ConvGeometry g, Conv2dParams p) {
        return onednn() && OnednnConv.forwardBf16(x, w, bias, y, g, p);
    }

    /**
     * The inference plan's pooling: y [n, c, oh, ow] = pool(x [n, c, h, w]) on the oneDNN primitive
     * {@link #pool2d} runs, so a plan's results equal Model.forward's; false, having done nothing,
     * when pooling is not on oneDNN here: the caller runs {@link CpuKernels#pool2d}.
     */
    public static boolean onednnPool2d(PoolMode mode, Pool2dParams p, MemorySegment x, MemorySegment y, long n, long c, long h, long w, long oh, long ow) {
        return onednnPool() && OnednnPool.forward(mode, p, x, y, n, c, h, w, oh, ow);
    }

    @Override
    public void conv2d(Tensor x, Tensor w, Conv2dParams p, Tensor y) {
        conv2d(x, w, null, p, y);
    }

    @Override
    public void conv2d(Tensor x, Tensor w, Tensor bias, Conv2dParams p, Tensor y) {
        f32("conv2d", x); f32("conv2d", w); f32("conv2d", y); // one at a time: no varargs array per call
        ConvGeometry g = Shapes.conv("conv2d", x, w, p, y);
        if (bias != null) {
            f32("conv2d", bias);
            if (bias.numel() != g.k()) throw new IllegalArgumentException("conv2d: bias " + bias.describe() + " does not match the " + g.k() + " output channels");
        }
        if (onednn()) {
            // Each operand as it is, with its layout (storage() of a row-major tensor is its data; see blockedActivations).
            boolean yBlocked = mayWriteBlocked(y);
            if (OnednnConv.forward(x.storage(), w.data(), bias == null ? null : bias.data(), y.storage(), g, p, isBlocked(x), yBlocked)) {
                y.setLayout(blockedIf(yBlocked));
                return;
            }
        }
        try (Arena arena = Arena.ofShared()) { // shared: im2col/col2im run on several threads
            MemorySegment col = CpuMemory.allocate(arena, (long) g.crs() * g.ohw() * 4, 64);
            for (int b = 0; b < g.n(); b++) {
                long img = (long) b * g.c() * g.h() * g.w();
                parallel(g.c(), (long) g.r() * g.s() * g.ohw(), ci -> CpuKernels.im2col(x.data(), img, g, p, col, (int) ci, (int) ci + 1));
                MemorySegment yb = y.data().asSlice((long) b * g.k() * g.ohw() * 4, (long) g.k() * g.ohw() * 4);
                CpuBlas.sgemm(false, false, g.k(), g.ohw(), g.crs(), 1f, w.data(), g.crs(), col, g.ohw(), 0f, yb, g.ohw());
            }
        }
        if (bias != null) channelBiasAdd(y, bias);
    }

    @Override
    public void conv2dBackwardData(Tensor dy, Tensor w, Conv2dParams p, Tensor dx) {
        f32("conv2dBackwardData", dy); f32("conv2dBackwardData", w); f32("conv2dBackwardData", dx); // one at a time: no varargs array per call
        ConvGeometry g = Shapes.conv("conv2dBackwardData", dx, w, p, dy);
        if (onednn()) {
            boolean dxBlocked = mayWriteBlocked(dx);
            if (OnednnConv.backwardData(dy.storage(), w.data(), dx.storage(), g, p, isBlocked(dy), dxBlocked)) {
                dx.setLayout(blockedIf(dxBlocked));
                return;
            }
        }
        dx.data().fill((byte) 0);
        try (Arena arena = Arena.ofShared()) { // shared: im2col/col2im run on several threads
            MemorySegment dcol = CpuMemory.allocate(arena, (long) g.crs() * g.ohw() * 4, 64);
            for (int b = 0; b < g.n(); b++) {
                MemorySegment dyb = dy.data().asSlice((long) b * g.k() * g.ohw() * 4, (long) g.k() * g.ohw() * 4);
                CpuBlas.sgemm(true, false, g.crs(), g.ohw(), g.k(), 1f, w.data(), g.crs(), dyb, g.ohw(), 0f, dcol, g.ohw());
                long img = (long) b * g.c() * g.h() * g.w();
                // Channel ci of dx only receives rows of channel ci: channels in parallel do not collide.
                parallel(g.c(), (long) g.r() * g.s() * g.ohw(), ci -> col2im(dcol, g, p, dx.data(), img, (int) ci, (int) ci + 1));
            }
        }
    }

    @Override
    public void conv2dBackwardFilter(Tensor x, Tensor dy, Conv2dParams p, Tensor dw, boolean accumulate) {
        conv2dBackwardFilter(x, dy, p, dw, null, accumulate);
    }

    @Override
    public void conv2dBackwardFilter(Tensor x, Tensor dy, Conv2dParams p, Tensor dw, Tensor dbias, boolean accumulate) {
        f32("conv2dBackwardFilter", x); f32("conv2dBackwardFilter", dy); f32("conv2dBackwardFilter", dw); // one at a time: no varargs array per call
        ConvGeometry g = Shapes.conv("conv2dBackwardFilter", x, dw, p, dy);
        if (dbias != null) {
            f32("conv2dBackwardFilter", dbias);
            if (dbias.numel() != g.k()) {
                throw new IllegalArgumentException("conv2dBackwardFilter: bias gradient " + dbias.describe() + " does not match the " + g.k() + " output channels");
            }
        }
        if (onednn() && OnednnConv.backwardWeights(x.storage(), dy.storage(), dw.data(), dbias == null ? null : dbias.data(), g, p, accumulate,
            isBlocked(x), isBlocked(dy))) return;
        try (Arena arena = Arena.ofShared()) { // shared: im2col/col2im run on several threads
            MemorySegment col = CpuMemory.allocate(arena, (long) g.crs() * g.ohw() * 4, 64);
            for (int b = 0; b < g.n(); b++) {
                long img = (long) b * g.c() * g.h() * g.w();
                parallel(g.c(), (long) g.r() * g.s() * g.ohw(), ci -> CpuKernels.im2col(x.data(), img, g, p, col, (int) ci, (int) ci + 1));
                MemorySegment dyb = dy.data().asSlice((long) b * g.k() * g.ohw() * 4, (long) g.k() * g.ohw() * 4);
                float beta = (b == 0 && !accumulate) ? 0f : 1f;
                CpuBlas.sgemm(false, true, g.k(), g.crs(), g.ohw(), 1f, dyb, g.ohw(), col, g.ohw(), beta, dw.data(), g.crs());
            }
        }
        if (dbias != null) channelBiasGrad(dy, dbias, accumulate);
    }

    // ---- pooling

    @Override
    public void pool2d(PoolMode mode, Pool2dParams p, Tensor x, Tensor y) {
        String op = mode == PoolMode.MAX ? "pool2d(MAX)" : "pool2d(AVG)"; // constants: no string built per call
        f32(op, x);
        f32(op, y);
        Shapes.pool(op, p, x, y);
        long h = x.size(2), w = x.size(3), oh = y.size(2), ow = y.size(3);
        MemorySegment xs = x.data(), ys = y.data();
        if (onednnPool() && OnednnPool.forward(mode, p, xs, ys, x.size(0), x.size(1), h, w, oh, ow)) return;
        parallel(x.size(0) * x.size(1), oh * ow * p.kernelH() * p.kernelW(), plane -> CpuKernels.pool2d(mode, p, xs, ys, plane, plane + 1, h, w, oh, ow));
    }

    @Override
    public void pool2dBackward(PoolMode mode, Pool2dParams p, Tensor x, Tensor y, Tensor dy, Tensor dx) {
        String op = mode == PoolMode.MAX ? "pool2dBackward(MAX)" : "pool2dBackward(AVG)";
        f32(op, x);
        f32(op, y);
        f32(op, dy);
        f32(op, dx);
        Shapes.pool(op, p, x, y);
        Shapes.same(op, y, dy);
        Shapes.same(op, x, dx);
        long h = x.size(2), w = x.size(3), oh = y.size(2), ow = y.size(3);
        MemorySegment xs = x.data(), dys = dy.data(), dxs = dx.data();
        if (onednnPool() && OnednnPool.backward(mode, p, xs, dys, dxs, x.size(0), x.size(1), h, w, oh, ow)) return;
        float divisor = p.kernelH() * p.kernelW();
        parallel(x.size(0) * x.size(1), oh * ow * p.kernelH() * p.kernelW(), plane -> {
            for (long i = plane * h * w; i < (plane + 1) * h * w; i++) set(dxs, i, 0f);
            for (long i = 0; i < oh; i++) for (long j = 0; j < ow; j++) {
                float g = f(dys, (plane * oh + i) * ow + j);
                long best = -1;
                float bestValue = Float.NEGATIVE_INFINITY;
                for (int u = 0; u < p.kernelH(); u++) for (int v = 0; v < p.kernelW(); v++) {
                    long yy = i * p.strideH() - p.padH() + u, xx = j * p.strideW() - p.padW() + v;
                    if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                    long at = (plane * h + yy) * w + xx;
                    if (mode == PoolMode.AVG) {
                        set(dxs, at, f(dxs, at) + g / divisor);
                    } else {
                        float val = f(xs, at);
                        if (best < 0 || val > bestValue || (Float.isNaN(val) && !Float.isNaN(bestValue))) {
                            best = at;
                            bestValue = val;
                        }
                    }
                }
                if (mode == PoolMode.MAX && best >= 0) set(dxs, best, f(dxs, best) + g);
            }
        });
    }

    @Override
    public void globalAvgPool(Tensor x, Tensor y) {
        f32("globalAvgPool", x, y);
        Shapes.rank("globalAvgPool", x, 4);
        Shapes.expect("globalAvgPool output", y, x.size(0), x.size(1), 1, 1);
        long hw = x.size(2) * x.size(3);
        if (isBlocked(x)) { // nChw16c: channel c of image n is every 16th float from its block's start; summed in the same order
            MemorySegment xs = x.storage(), ys = y.data();
            long channels = x.size(1);
            parallel(x.size(0) * channels, hw, plane -> {
                long n = plane / channels, c = plane % channels, at = ((n * (channels / 16) + c / 16) * hw) * 16 + c % 16;
                double acc = 0;
                for (long i = 0; i < hw; i++) acc += f(xs, at + i * 16);
                set(ys, plane, (float) (acc / hw));
            });
            return;
        }
        MemorySegment xs = x.data(), ys = y.data();
        parallel(x.size(0) * x.size(1), hw, plane -> CpuKernels.meanRows(xs, ys, plane, plane + 1, hw));
    }

    @Override
    public void globalAvgPoolBackward(Tensor dy, Tensor dx) {
        f32("globalAvgPoolBackward", dy, dx);
        Shapes.rank("globalAvgPoolBackward", dx, 4);
        Shapes.expect("globalAvgPoolBackward dy", dy, dx.size(0), dx.size(1), 1, 1);
        long hw = dx.size(2) * dx.size(3);
        if (mayWriteBlocked(dx)) { // nChw16c, for the blocked activations before the pooling: each block of 16 channels in turn
            MemorySegment dys = dy.data(), dxs = out(dx, Tensor.Layout.NCHW16C);
            long blocks = dx.size(1) / 16;
            parallel(dx.size(0) * blocks, hw * 16, nb -> {
                long n = nb / blocks, c0 = (nb % blocks) * 16, base = nb * hw * 16;
                for (long i = 0; i < hw; i++) for (long j = 0; j < 16; j++) set(dxs, base + i * 16 + j, f(dys, n * dx.size(1) + c0 + j) / hw);
            });
            return;
        }
        MemorySegment dys = dy.data(), dxs = out(dx, Tensor.Layout.ROW_MAJOR);
        parallel(dx.size(0) * dx.size(1), hw, plane -> {
            float g = f(dys, plane) / hw;
            for (long i = plane * hw; i < (plane + 1) * hw; i++) set(dxs, i, g);
        });
    }

    // ---- batch normalization

    @Override
    public void batchNormTrain(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean, Tensor runningVar, float momentum, float eps,
                               Tensor y, Tensor saveMean, Tensor saveInvStd) {
        String op = "batchNormTrain";
        long[] l = BackendChecks.batchNormTrain(this, x, gamma, beta, runningMean, runningVar, y, saveMean, saveInvStd);
        long count = l[0] * l[2];
        // A blocked x (nChw16c in, nChw16c out) takes oneDNN's blocked kernel at any size, with no reorder; a row-major one where it measured faster.
        boolean xBlocked = isBlocked(x);
        if (xBlocked ? BNORM_ON_ONEDNN : onednnBatchNorm(x, l[0], l[1], l[2])) {
            boolean yBlocked = xBlocked && y.mayHoldLayout();
            if (OnednnBatchNorm.forwardTraining(x.storage(), gamma.data(), beta.data(), runningMean.data(), runningVar.data(), momentum, eps, y.storage(),
                saveMean.data(), saveInvStd.data(), l[0], l[1], l[2], xBlocked, yBlocked)) {
                y.setLayout(blockedIf(yBlocked));
                return;
            }
        }
        MemorySegment xs = x.data(), ys = out(y, Tensor.Layout.ROW_MAJOR);
        long nb = l[0], channels = l[1], inner = l[2];
        parallel(channels, count * 3, c -> {
            // One pass for the statistics: sums of d = x - shift and d^2 in double, with shift = the channel's first value, so
            // E[d^2] - E[d]^2 keeps double's precision for float data; four accumulators each, so the adds do not wait on one another.
            double shift = f(xs, c * inner);
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0;
            for (long n = 0; n < nb; n++) {
                long base = (n * channels + c) * inner, i = 0;
                for (; i + 3 < inner; i += 4) {
                    double d0 = f(xs, base + i) - shift, d1 = f(xs, base + i + 1) - shift, d2 = f(xs, base + i + 2) - shift, d3 = f(xs, base + i + 3) - shift;
                    s0 += d0;
                    s1 += d1;
                    s2 += d2;
                    s3 += d3;
                    q0 += d0 * d0;
                    q1 += d1 * d1;
                    q2 += d2 * d2;
                    q3 += d3 * d3;
                }
                for (; i < inner; i++) {
                    double d = f(xs, base + i) - shift;
                    s0 += d;
                    q0 += d * d;
                }
            }
            double meanShifted = ((s0 + s1) + (s2 + s3)) / count;
            double mean = shift + meanShifted, var = Math.max(0, ((q0 + q1) + (q2 + q3)) / count - meanShifted * meanShifted);
            double invStd = 1 / Math.sqrt(var + eps);
            double scale = invStd * f(gamma.data(), c), offset = f(beta.data(), c) - mean * scale; // y = (x - mean) invStd gamma + beta
            for (long n = 0; n < nb; n++) {
                long base = (n * channels + c) * inner;
                for (long i = base; i < base + inner; i++) set(ys, i, (float) (f(xs, i) * scale + offset));
            }
            set(runningMean.data(), c, (float) ((1 - momentum) * f(runningMean.data(), c) + momentum * mean));
            set(runningVar.data(), c, (float) ((1 - momentum) * f(runningVar.data(), c) + momentum * var * count / (count - 1)));
            set(saveMean.data(), c, (float) mean);
            set(saveInvStd.data(), c, (float) invStd);
        });
    }

    @Override
    public void batchNormEval(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean, Tensor runningVar, float eps, Tensor y) {
        String op = "batchNormEval";
        f32(op, x, gamma, beta, runningMean, runningVar, y);
        Shapes.same(op, x, y);
        long[] l = Shapes.channelLayout(op, x, gamma, beta, runningMean, runningVar);
        MemorySegment xs = x.data(), ys = y.data();
        parallel(l[0] * l[1], l[2], nc -> CpuKernels.batchNormEval(xs, ys, gamma.data(), beta.data(), runningMean.data(), runningVar.data(), eps, nc, nc + 1,
            l[1], l[2]));
    }

    @Override
    public void batchNormBackward(Tensor x, Tensor dy, Tensor gamma, Tensor saveMean, Tensor saveInvStd, Tensor dx, Tensor dgamma, Tensor dbeta) {
        String op = "batchNormBackward";
        f32(op, x, dy, gamma, saveMean, saveInvStd, dx, dgamma, dbeta);
        Shapes.same(op, x, dy);
        Shapes.same(op, x, dx);
        long[] l = Shapes.channelLayout(op, x, gamma, saveMean, saveInvStd, dgamma, dbeta);
        long count = l[0] * l[2];
        // The blocked forward's backward takes each argument as it is and writes dx in nChw16c; a row-major one as the forward routes it.
        boolean blocked = isBlocked(x) || isBlocked(dy);
        if (blocked ? BNORM_ON_ONEDNN : onednnBatchNorm(x, l[0], l[1], l[2])) {
            boolean dxBlocked = blocked && dx.mayHoldLayout();
            if (OnednnBatchNorm.backward(x.storage(), dy.storage(), gamma.data(), saveMean.data(), saveInvStd.data(), dx.storage(), dgamma.data(),
                dbeta.data(), l[0], l[1], l[2], isBlocked(x), isBlocked(dy), dxBlocked)) {
                dx.setLayout(blockedIf(dxBlocked));
                return;
            }
        }
        MemorySegment xs = x.data(), dys = dy.data(), dxs = out(dx, Tensor.Layout.ROW_MAJOR);
        long nb = l[0], channels = l[1], inner = l[2];
        parallel(channels, count * 3, c -> {
            double mean = f(saveMean.data(), c), invStd = f(saveInvStd.data(), c), g = f(gamma.data(), c);
            // sum dy and sum dy (x - mean), four accumulators each (independent adds).
            double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
            for (long n = 0; n < nb; n++) {
                long base = (n * channels + c) * inner, i = 0;
                for (; i + 3 < inner; i += 4) {
                    double d0 = f(dys, base + i), d1 = f(dys, base + i + 1), d2 = f(dys, base + i + 2), d3 = f(dys, base + i + 3);
                    a0 += d0;
                    a1 += d1;
                    a2 += d2;
                    a3 += d3;
                    b0 += d0 * (f(xs, base + i) - mean);
                    b1 += d1 * (f(xs, base + i + 1) - mean);
                    b2 += d2 * (f(xs, base + i + 2) - mean);
                    b3 += d3 * (f(xs, base + i + 3) - mean);
                }
                for (; i < inner; i++) {
                    double d = f(dys, base + i);
                    a0 += d;
                    b0 += d * (f(xs, base + i) - mean);
                }
            }
            double sumDy = (a0 + a1) + (a2 + a3), sumDyXhat = ((b0 + b1) + (b2 + b3)) * invStd;
            // dx = g invStd / count (count dy - sumDy - xhat sumDyXhat), xhat = (x - mean) invStd.
            double k = g * invStd / count, kDy = k * count, kConst = k * sumDy, kX = k * invStd * sumDyXhat;
            for (long n = 0; n < nb; n++) {
                long base = (n * channels + c) * inner;
                for (long i = base; i < base + inner; i++) set(dxs, i, (float) (kDy * f(dys, i) - kConst - (f(xs, i) - mean) * kX));
            }
            set(dgamma.data(), c, (float) sumDyXhat);
            set(dbeta.data(), c, (float) sumDy);
        });
    }

    // ---- optimizers

    @Override
    public void sgdStep(Optimizers.Sgd cfg, long step, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum) {
        BackendChecks.optimizerStep("sgdStep", step);
        sgd(cfg, cfg.lr(), step == 1, params, grads, momentum);
    }

    @Override
    public void sgdStep(Optimizers.Sgd cfg, Tensor scalars, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum) {
        float[] s = stepScalars("sgdStep", scalars);
        sgd(cfg, s[0], s[1] != 0, params, grads, momentum);
    }

    private void sgd(Optimizers.Sgd cfg, float lr, boolean first, List<Tensor> params, List<Tensor> grads, List<Tensor> momentum) {
        boolean useMomentum = cfg.momentum() != 0;
        Shapes.optimizerState("sgdStep", this, params, useMomentum ? List.of(grads, momentum) : List.of(grads));
        for (int t = 0; t < params.size(); t++) {
            MemorySegment p = params.get(t).data(), g = grads.get(t).data(), m = useMomentum ? momentum.get(t).data() : null;
            parallelIndex(params.get(t).numel(), (lo, hi) -> {
                for (long i = lo; i < hi; i++) {
                    float d = f(g, i) + cfg.weightDecay() * f(p, i);
                    if (useMomentum) {
                        float buf = first ? d : cfg.momentum() * f(m, i) + (1 - cfg.dampening()) * d;
                        set(m, i, buf);
                        d = cfg.nesterov() ? d + cfg.momentum() * buf : buf;
                    }
                    set(p, i, f(p, i) - lr * d);
                }
            });
        }
    }

    @Override
    public void adamwStep(Optimizers.AdamW cfg, long step, List<Tensor> params, List<Tensor> grads, List<Tensor> m, List<Tensor> v) {
        BackendChecks.optimizerStep("adamwStep", step);
        adamw(cfg, cfg.lr(), 1 - cfg.lr() * cfg.weightDecay(), 1 - Math.pow(cfg.beta1(), step), 1 - Math.pow(cfg.beta2(), step), params, grads, m, v);
    }

    @Override
    public void adamwStep(Optimizers.AdamW cfg, Tensor scalars, List<Tensor> params, List<Tensor> grads, List<Tensor> m, List<Tensor> v) {
        float[] s = stepScalars("adamwStep", scalars);
        adamw(cfg, s[0], s[1], s[2], s[3], params, grads, m, v);
    }

    private void adamw(Optimizers.AdamW cfg, float lr, float decay, double bc1, double bc2, List<Tensor> params, List<Tensor> grads, List<Tensor> m,
                       List<Tensor> v) {
        Shapes.optimizerState("adamwStep", this, params, List.of(grads, m, v));
        // float32 throughout, the CUDA kernel's arithmetic (d4j_adamw): the loop was in double (two
        // divisions and a square root per element, not vectorised) over segments and took about a
        // fifth of an MLP kd-step on oneDNN (JFR, 2026-12-06, bench/RESULTS.md). In float over
        // float[] blocks: 16-17 -> 2.0-2.4 ms a step for the 1.27M parameters of the MLP student
        // (loaded 2-core machine; in float over segments it was 5.3-5.5 ms).
        float b1 = cfg.beta1(), b2 = cfg.beta2(), eps = cfg.eps(), c1 = (float) bc1, c2 = (float) bc2;
        for (int t = 0; t < params.size(); t++) {
            MemorySegment p = params.get(t).data(), g = grads.get(t).data(), ms = m.get(t).data(), vs = v.get(t).data();
            parallelIndex(params.get(t).numel(), (lo, hi) -> adamwRange(p, g, ms, vs, lo, hi, lr, b1, b2, eps, decay, c1, c2));
        }
    }

    /** Per-thread float[] blocks for AdamW's chunks (p, g, m, v), 4096 floats each (parallelIndex's chunk). */
    private static final ThreadLocal<float[][]> ADAMW_BLOCKS = ThreadLocal.withInitial(() -> new float[4][1 << 12]);

    /**
     * AdamW over elements [lo, hi): p *= decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= lr (m / bc1) / (sqrt(v / bc2) + eps). The chunk is copied into float[] blocks, updated
     * there and copied back: C2 vectorises the array loop (divisions and square roots included),
     * where the same loop over four segments kept a liveness check per access (JFR: about a third
     * of AdamW's samples were MemorySessionImpl.checkValidStateRaw and friends).
     */
    private static void adamwRange(MemorySegment p, MemorySegment g, MemorySegment ms, MemorySegment vs, long lo, long hi, float lr, float b1,
                                   float b2, float eps, float decay, float bc1, float bc2) {
        float ob1 = 1f - b1, ob2 = 1f - b2;
        float[][] blocks = ADAMW_BLOCKS.get();
        float[] pb = blocks[0], gb = blocks[1], mb = blocks[2], vb = blocks[3];
        for (long start = lo; start < hi; start += pb.length) {
            int n = (int) Math.min(pb.length, hi - start);
            MemorySegment.copy(p, JAVA_FLOAT, start * Float.BYTES, pb, 0, n);
            MemorySegment.copy(g, JAVA_FLOAT, start * Float.BYTES, gb, 0, n);
            MemorySegment.copy(ms, JAVA_FLOAT, start * Float.BYTES, mb, 0, n);
            MemorySegment.copy(vs, JAVA_FLOAT, start * Float.BYTES, vb, 0, n);
            for (int i = 0; i < n; i++) {
                float gi = gb[i];
                float mi = b1 * mb[i] + ob1 * gi;
                float vi = b2 * vb[i] + ob2 * gi * gi;
                mb[i] = mi;
                vb[i] = vi;
                pb[i] = pb[i] * decay - lr * (mi / bc1) / ((float) Math.sqrt(vi / bc2) + eps);
            }
            MemorySegment.copy(pb, 0, p, JAVA_FLOAT, start * Float.BYTES, n);
            MemorySegment.copy(mb, 0, ms, JAVA_FLOAT, start * Float.BYTES, n);
            MemorySegment.copy(vb, 0, vs, JAVA_FLOAT, start * Float.BYTES, n);
        }
    }

    private float[] stepScalars(String op, Tensor scalars) {
        BackendChecks.stepScalars(this, op, scalars);
        return read(scalars);
    }

    // ---- checks

    @Override
    public boolean hasNonFinite(Tensor... tensors) {
        for (Tensor t : tensors) {
            f32("hasNonFinite", t);
            MemorySegment s = t.data();
            for (long i = 0; i < t.numel(); i++) if (!Float.isFinite(f(s, i))) return true;
        }
        return false;
    }

    @Override
    public void close() {
        // Shared and stateless: nothing to release.
    }
}
