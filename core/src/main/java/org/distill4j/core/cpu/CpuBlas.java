package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.Downcalls;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibrary;
import org.distill4j.bindings.blas.cblas_h;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.core.Bf16;

/**
 * Single-precision gemm for the CPU backend over off-heap float32 segments, on one of three
 * engines ({@link CpuEngine}): oneDNN's matmul primitive, OpenBLAS's CBLAS, or a plain Java gemm.
 * All three take row-major matrices and PyTorch's transposition conventions, and share this
 * class's argument checks. The engine is chosen once per process ({@link #engine()}); a shape
 * oneDNN declines runs on the next engine present, which is also the oracle the tests hold it to.
 * {@link #gemmBf16} multiplies bfloat16 matrices into float32 (a frozen bf16 teacher's weights).
 */
public final class CpuBlas {
    private static final NativeLibrary OPENBLAS = NativeLibraries.forBindings(NativeLibraries.Library.OPENBLAS);
    /** The engine switch from before there were three engines: {@code -Ddistill4j.blas.java=true} means {@code java}. */
    private static final boolean FORCE_JAVA = Boolean.getBoolean("distill4j.blas.java");

    private CpuBlas() {}

    static boolean openBlasLoaded() {
        return OPENBLAS.isLoaded();
    }

    static String openBlasUnavailableReason() {
        return OPENBLAS.isLoaded() ? "" : OPENBLAS.failure().orElseThrow().getMessage();
    }

    /**
     * The engine picked for this process, resolved on first use: {@code distill4j.cpu.engine} when
     * set (an engine it names that is not present is an error, not a silent fallback), else
     * {@code java} under {@code -Ddistill4j.blas.java=true}, else the fastest present.
     */
    private static final class Selected {
        static final CpuEngine ENGINE;
        static final String HOW;
        static final RuntimeException ERROR;

        static {
            CpuEngine engine = null;
            String how = null;
            RuntimeException error = null;
            String requested = System.getProperty(CpuEngine.PROPERTY);
            try {
                if (requested != null && !requested.isBlank()) {
                    engine = CpuEngine.parse(requested);
                    how = "chosen by " + CpuEngine.PROPERTY;
                    if (!engine.available()) {
                        error = new IllegalStateException(CpuEngine.PROPERTY + "=" + engine.key() + " but " + engine.key()
                            + " is not available: " + engine.unavailableReason());
                        engine = null;
                    }
                } else if (FORCE_JAVA) {
                    engine = CpuEngine.JAVA;
                    how = "forced by -Ddistill4j.blas.java=true";
                } else {
                    engine = CpuEngine.ONEDNN.available() ? CpuEngine.ONEDNN : CpuEngine.OPENBLAS.available() ? CpuEngine.OPENBLAS : CpuEngine.JAVA;
                    how = "the fastest present";
                }
            } catch (IllegalArgumentException e) {
                error = e;
            }
            ENGINE = engine;
            HOW = how;
            ERROR = error;
        }
    }

    /**
     * The engine gemm runs on in this process. Throws, with one line, when {@code distill4j.cpu.engine}
     * names an unknown engine or one that is not present.
     */
    public static CpuEngine engine() {
        if (Selected.ERROR != null) {
            throw Selected.ERROR instanceof IllegalArgumentException iae ? new IllegalArgumentException(iae.getMessage())
                : new IllegalStateException(Selected.ERROR.getMessage());
        }
        return Selected.ENGINE;
    }

    /** The engine a shape runs on when the selected one declines it: OpenBLAS when loaded (and not forced off), else Java. */
    static CpuEngine fallback() {
        return OPENBLAS.isLoaded() && !FORCE_JAVA && engine() != CpuEngine.JAVA ? CpuEngine.OPENBLAS : CpuEngine.JAVA;
    }

    /** True when gemm runs on OpenBLAS. */
    public static boolean usesOpenBlas() {
        return engine() == CpuEngine.OPENBLAS;
    }

    /**
     * One row's gemv splits over an {@link IntraOpPool} the caller is bound to from this many
     * multiply-adds (a 784 x 800 layer is 627k: about 30 us on one core here, against a few us to
     * hand a block to a spinning helper) and into blocks of at least this many of B's rows.
     */
    private static final long GEMV_SPLIT_MIN_MACS = 1L << 17;
    private static final int GEMV_SPLIT_MIN_ROWS = 64;

    private static int singleThreadedHolders, openBlasHolders;
    private static int threadsBefore;
    /** Read by the oneDNN engine on every call: true while any caller holds single-threaded gemms. */
    private static volatile boolean singleThreaded;

    /**
     * Asks the gemm engines for one thread per call until the matching {@link #releaseSingleThreaded()}
     * (reference counted; the previous count comes back with the last release). For callers that
     * run many gemm calls in parallel themselves, e.g. a Predictor serving many threads: OpenBLAS's
     * own thread pool is shared by the whole process, and several threads each starting threaded
     * calls queue on it (measured: p99 of 356 ms at 8 callers instead of tens of microseconds);
     * oneDNN's OpenMP would start a full team per calling thread and oversubscribe the cores.
     * The setting is process-wide, so training in the same process runs its gemms on one thread
     * meanwhile.
     */
    public static synchronized void holdSingleThreaded() {
        if (singleThreadedHolders++ == 0) singleThreaded = true;
        holdOpenBlasSingleThreaded();
    }

    public static synchronized void releaseSingleThreaded() {
        if (singleThreadedHolders == 0) return;
        if (--singleThreadedHolders == 0) singleThreaded = false;
        releaseOpenBlasSingleThreaded();
    }

    /**
     * Holds only OpenBLAS to one thread per call (reference counted with {@link #holdSingleThreaded()}),
     * leaving oneDNN its OpenMP team: for a Predictor with the libraries' own pools on the oneDNN
     * engine, whose OpenBLAS calls are the small ones (one row's gemv, a 10-class head). OpenBLAS's
     * threaded gemv waits for its second thread at every call; on a loaded 2-core machine that wait
     * was a scheduler slice (batch-1 p50 24-28 ms against 40 us idle, bench/RESULTS.md).
     */
    public static synchronized void holdOpenBlasSingleThreaded() {
        if (openBlasHolders++ == 0 && OPENBLAS.isLoaded()) {
            threadsBefore = cblas_h.openblas_get_num_threads();
            cblas_h.openblas_set_num_threads(1);
        }
    }

    public static synchronized void releaseOpenBlasSingleThreaded() {
        if (openBlasHolders == 0) return;
        if (--openBlasHolders == 0 && OPENBLAS.isLoaded()) cblas_h.openblas_set_num_threads(threadsBefore);
    }

    /** Whether a caller holds gemms single-threaded now (see {@link #holdSingleThreaded()}). */
    static boolean singleThreadedHeld() {
        return singleThreaded;
    }

    /** What gemm runs on, in words, for reports. */
    public static String provider() {
        CpuEngine engine;
        try {
            engine = engine();
        } catch (RuntimeException e) {
            return "no engine: " + e.getMessage();
        }
        String how = " (" + Selected.HOW + ")";
        return switch (engine) {
            case JAVA -> "pure Java" + how + (OPENBLAS.isLoaded() || FORCE_JAVA ? "" : "; OpenBLAS unavailable: " + openBlasUnavailableReason());
            case OPENBLAS -> openBlasDescription() + how;
            case ONEDNN -> Onednn.description() + how + "; falls back to "
                + (fallback() == CpuEngine.OPENBLAS ? openBlasDescription() : "pure Java");
        };
    }

    private static String openBlasDescription() {
        String config = Downcalls.cString(cblas_h.openblas_get_config(), "OpenBLAS");
        return config + " (" + OPENBLAS.path().orElseThrow() + "), " + cblas_h.openblas_get_num_threads() + " threads";
    }

    /**
     * Row-major C[m,n] = alpha * op(A) op(B) + beta * C, op(A) [m,k], op(B) [k,n]. Leading
     * dimensions are the stored row lengths, in elements. Segments hold float32.
     */
    public static void sgemm(boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda,
                             MemorySegment b, int ldb, float beta, MemorySegment c, int ldc) {
        checkExtent("A", a, transA ? k : m, transA ? m : k, lda);
        checkExtent("B", b, transB ? n : k, transB ? k : n, ldb);
        checkExtent("C", c, m, n, ldc);
        CpuEngine engine = engine();
        if (engine == CpuEngine.ONEDNN && onednnPays(m, n, k, 1) && alpha != 0f // alpha 0: BLAS reads neither A nor B
                && OnednnMatmul.sgemm(transA, transB, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1)) {
            return;
        }
        sgemmOn(engine == CpuEngine.ONEDNN ? fallback() : engine, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    /**
     * {@code batch} gemms C_i = alpha op(A_i) op(B_i) + beta C_i, where X_i starts {@code i * strideX}
     * elements after the start of segment X (a stride of 0 broadcasts that operand; C's stride
     * must not be 0 when batch > 1). oneDNN runs the whole batch as one primitive; the other
     * engines loop over it. Same checks as {@link #sgemm} on the whole batch's extent. k >= 1.
     */
    public static void sgemmStridedBatched(boolean transA, boolean transB, int m, int n, int k, float alpha,
                                           MemorySegment a, int lda, long strideA, MemorySegment b, int ldb, long strideB,
                                           float beta, MemorySegment c, int ldc, long strideC, int batch) {
        if (batch < 1) throw new IllegalArgumentException("gemm: batch is " + batch + ", needs >= 1");
        if (k < 1) throw new IllegalArgumentException("gemm: strided batches need k >= 1, got " + k);
        if (strideA < 0 || strideB < 0 || strideC < 0 || (batch > 1 && strideC == 0)) {
            throw new IllegalArgumentException("gemm: strides must be >= 0 and C's > 0 for batch > 1, got A " + strideA + ", B " + strideB + ", C " + strideC);
        }
        long lastA = (batch - 1) * strideA * Float.BYTES, lastB = (batch - 1) * strideB * Float.BYTES, lastC = (batch - 1) * strideC * Float.BYTES;
        if (m == 0 || n == 0) return;
        checkExtent("A", a, lastA, transA ? k : m, transA ? m : k, lda);
        checkExtent("B", b, lastB, transB ? n : k, transB ? k : n, ldb);
        checkExtent("C", c, lastC, m, n, ldc);
        CpuEngine engine = engine();
        if (engine == CpuEngine.ONEDNN && onednnPays(m, n, k, batch) && alpha != 0f
                && OnednnMatmul.sgemm(transA, transB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, batch)) {
            return;
        }
        CpuEngine on = engine == CpuEngine.ONEDNN ? fallback() : engine;
        for (int i = 0; i < batch; i++) {
            sgemmOn(on, transA, transB, m, n, k, alpha, a.asSlice(i * strideA * Float.BYTES), lda, b.asSlice(i * strideB * Float.BYTES), ldb,
                beta, c.asSlice(i * strideC * Float.BYTES), ldc);
        }
    }

    /**
     * Row-major C[m,n] = op(A) op(B) + beta C with A and B bfloat16 (raw bits, 2 bytes an element,
     * leading dimensions in elements) and C float32: the products of bfloat16 values are exact in
     * float32, and the sums accumulate in float32. On the oneDNN engine this is oneDNN's bf16
     * matmul (AVX-512 BF16 dot products where the CPU has them, else oneDNN's emulation); on the
     * others, and for a problem oneDNN declines, {@link #javaGemmBf16}. Callers that want a fast
     * path check {@link #hasFastBf16()} first.
     */
    public static void gemmBf16(boolean transA, boolean transB, int m, int n, int k, MemorySegment a, int lda,
                                MemorySegment b, int ldb, float beta, MemorySegment c, int ldc) {
        checkExtent("A", a, 0, transA ? k : m, transA ? m : k, lda, Short.BYTES);
        checkExtent("B", b, 0, transB ? n : k, transB ? k : n, ldb, Short.BYTES);
        checkExtent("C", c, 0, m, n, ldc, Float.BYTES);
        if (m == 0 || n == 0) return;
        if (k == 0) {
            for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) {
                long idx = (long) i * ldc + j;
                c.setAtIndex(JAVA_FLOAT, idx, beta == 0f ? 0f : beta * c.getAtIndex(JAVA_FLOAT, idx));
            }
            return;
        }
        if (engine() == CpuEngine.ONEDNN
                && OnednnMatmul.gemm(transA, transB, m, n, k, 1f, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1, dnnl_h.dnnl_bf16)) {
            return;
        }
        javaGemmBf16(transA, transB, m, n, k, a, lda, b, ldb, beta, c, ldc);
    }

    /** Whether {@link #gemmBf16} runs on a native bf16 kernel here (the oneDNN engine), not the Java loop. */
    public static boolean hasFastBf16() {
        return engine() == CpuEngine.ONEDNN;
    }

    /**
     * The bf16 fallback and oracle: each product of two bf16 values widened exactly, summed in
     * float32 in k order (i-k-j, so the inner loop streams rows of B and C). Rows split across the
     * common fork-join pool when the problem is large (so the segments must be readable from any
     * thread, as the backend's tensors are). Not fast.
     */
    static void javaGemmBf16(boolean transA, boolean transB, int m, int n, int k, MemorySegment a, int lda,
                             MemorySegment b, int ldb, float beta, MemorySegment c, int ldc) {
        java.util.stream.IntStream rows = java.util.stream.IntStream.range(0, m);
        if ((long) m * n * k >= ONEDNN_MIN_WORK) rows = rows.parallel();
        rows.forEach(i -> {
            float[] row = new float[n];
            for (int p = 0; p < k; p++) {
                float av = Bf16.toFloat(a.getAtIndex(JAVA_SHORT, transA ? (long) p * lda + i : (long) i * lda + p));
                for (int j = 0; j < n; j++) {
                    float bv = Bf16.toFloat(b.getAtIndex(JAVA_SHORT, transB ? (long) j * ldb + p : (long) p * ldb + j));
                    row[j] += av * bv;
                }
            }
            for (int j = 0; j < n; j++) {
                long idx = (long) i * ldc + j;
                c.setAtIndex(JAVA_FLOAT, idx, row[j] + (beta == 0f ? 0f : beta * c.getAtIndex(JAVA_FLOAT, idx)));
            }
        });
    }

    /** Below this many multiply-adds a gemm runs on the fallback engine even when oneDNN is selected. */
    static final long ONEDNN_MIN_WORK = 1L << 20;

    /**
     * Whether a gemm goes to oneDNN: not one row (m = 1 is a matrix-vector product, which OpenBLAS's
     * gemv does without packing), and at least {@link #ONEDNN_MIN_WORK} multiply-adds per call (a
     * strided batch is one call).
     * Below that oneDNN's fixed cost per call (claiming a context, re-pointing its memory objects,
     * waking its OpenMP team) outweighs its kernels: measured on the 2-core machine (busy), 64 x 64 x 64
     * took 327 us on oneDNN against 27 us on OpenBLAS, 1 x 800 x 784 1,683 against 474 us, while
     * 256 x 800 x 784 took 24 against 72 ms (bench/RESULTS.md, "oneDNN matmul").
     */
    static boolean onednnPays(int m, int n, int k, int batch) {
        return m > 1 && n > 0 && k > 0 && (long) m * n * k * batch >= ONEDNN_MIN_WORK;
    }

    /** sgemm on one given engine, arguments already checked (tests compare the engines with it). */
    static void sgemmOn(CpuEngine engine, boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda,
                        MemorySegment b, int ldb, float beta, MemorySegment c, int ldc) {
        switch (engine) {
            case ONEDNN -> {
                if (!OnednnMatmul.sgemm(transA, transB, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1)) {
                    throw new IllegalStateException("oneDNN declined gemm m=" + m + " n=" + n + " k=" + k);
                }
            }
            case OPENBLAS -> {
                if (m == 1 && !transA && transB) {
                    // One row through a linear layer, c = alpha B a + beta c with B [n, k]: gemv reads B once
                    // and packs nothing (sgemm packs B on every call), which is what batch-1 latency wants.
                    IntraOpPool pool = IntraOpPool.bound();
                    if (pool != null && (long) n * k >= GEMV_SPLIT_MIN_MACS && n >= 2 * GEMV_SPLIT_MIN_ROWS && pool.reaches(a) && pool.reaches(b) && pool.reaches(c)) {
                        // A Predictor call on the libraries' pools: blocks of B's rows (c's features) on the caller and the pool's helpers.
                        // Block edges fall on multiples of 16 rows: OpenBLAS's x86 gemv kernels take rows in small
                        // groups and sum a grouped row in another order than a leftover one, so an edge inside a
                        // group changed a few outputs' last bits against the unsplit call. Aligned, the split gave
                        // the unsplit bits for every output tried (IntraOpPoolTest's shapes, 60 seeds), so an
                        // answer does not depend on whether the call ran alone.
                        pool.run(Math.min(pool.parallelism(), n / GEMV_SPLIT_MIN_ROWS), (p, parts) -> {
                            int lo = gemvBlockEdge(n, p, parts), hi = gemvBlockEdge(n, p + 1, parts);
                            cblas_h.cblas_sgemv(cblas_h.CblasRowMajor, cblas_h.CblasNoTrans, hi - lo, k, alpha, b.asSlice((long) lo * ldb * Float.BYTES), ldb,
                                a, 1, beta, c.asSlice((long) lo * Float.BYTES), 1);
                        });
                    } else {
                        cblas_h.cblas_sgemv(cblas_h.CblasRowMajor, cblas_h.CblasNoTrans, n, k, alpha, b, ldb, a, 1, beta, c, 1);
                    }
                } else {
                    cblas_h.cblas_sgemm(cblas_h.CblasRowMajor, transA ? cblas_h.CblasTrans : cblas_h.CblasNoTrans,
                        transB ? cblas_h.CblasTrans : cblas_h.CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
                }
            }
            case JAVA -> javaSgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
    }

    /** Where block p of a one-row gemv split into {@code parts} starts: n p / parts rounded down to 16 rows; n for p = parts. */
    private static int gemvBlockEdge(int n, int p, int parts) {
        return p == parts ? n : (int) ((long) n * p / parts) & ~15;
    }

    private static void checkExtent(String name, MemorySegment s, int rows, int cols, int ld) {
        checkExtent(name, s, 0, rows, cols, ld, Float.BYTES);
    }

    private static void checkExtent(String name, MemorySegment s, long start, int rows, int cols, int ld) {
        checkExtent(name, s, start, rows, cols, ld, Float.BYTES);
    }

    /** The matrix at byte {@code start} of {@code s}: rows x cols of {@code bytes}-byte elements with leading dimension ld fits in s. */
    private static void checkExtent(String name, MemorySegment s, long start, int rows, int cols, int ld, int bytes) {
        if (ld < Math.max(1, cols)) throw new IllegalArgumentException("gemm: leading dimension of " + name + " is " + ld + ", needs >= " + cols);
        long needed = rows == 0 ? 0 : start + ((long) (rows - 1) * ld + cols) * bytes;
        if (s.byteSize() < needed) {
            throw new IllegalArgumentException("gemm: " + name + " holds " + s.byteSize() + " bytes, needs " + needed
                + " for " + rows + "x" + cols + " with leading dimension " + ld);
        }
    }

    /**
     * The fallback: i-k-j loop order so the inner loop streams rows of B and C (vectorisable by C2),
     * float accumulation like BLAS. Correct for every transpose; not fast.
     */
    static void javaSgemm(boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda,
                          MemorySegment b, int ldb, float beta, MemorySegment c, int ldc) {
        float[] row = new float[n];
        for (int i = 0; i < m; i++) {
            java.util.Arrays.fill(row, 0f);
            for (int p = 0; p < k; p++) {
                float av = a.getAtIndex(JAVA_FLOAT, transA ? (long) p * lda + i : (long) i * lda + p);
                for (int j = 0; j < n; j++) {
                    float bv = b.getAtIndex(JAVA_FLOAT, transB ? (long) j * ldb + p : (long) p * ldb + j);
                    row[j] += av * bv;
                }
            }
            for (int j = 0; j < n; j++) {
                long idx = (long) i * ldc + j;
                float old = beta == 0f ? 0f : beta * c.getAtIndex(JAVA_FLOAT, idx);
                c.setAtIndex(JAVA_FLOAT, idx, alpha * row[j] + old);
            }
        }
    }
}
