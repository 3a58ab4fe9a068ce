package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.Downcalls;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibrary;
import org.distill4j.bindings.blas.cblas_h;

/**
 * Single-precision BLAS for the CPU backend over off-heap float32 segments: OpenBLAS's CBLAS when
 * it can be loaded (natives jar, system library; see NativeLibraries), else a plain Java gemm.
 * Both take row-major matrices and PyTorch's transposition conventions.
 */
public final class CpuBlas {
    private static final NativeLibrary OPENBLAS = NativeLibraries.forBindings(NativeLibraries.Library.OPENBLAS);
    private static final boolean FORCE_JAVA = Boolean.getBoolean("distill4j.blas.java");

    private CpuBlas() {}

    /** True when gemm runs on OpenBLAS. {@code -Ddistill4j.blas.java=true} forces the Java fallback. */
    public static boolean usesOpenBlas() {
        return OPENBLAS.isLoaded() && !FORCE_JAVA;
    }

    private static int singleThreadedHolders;
    private static int threadsBefore;

    /**
     * Asks OpenBLAS for one thread per call until the matching {@link #releaseSingleThreaded()}
     * (reference counted; the previous count comes back with the last release). For callers that
     * run many BLAS calls in parallel themselves, e.g. a Predictor serving many threads: OpenBLAS's
     * own thread pool is shared by the whole process, and several threads each starting threaded
     * calls queue on it (measured: p99 of 356 ms at 8 callers instead of tens of microseconds).
     * OpenBLAS's thread count is process-wide, so training in the same process runs its gemms on
     * one thread meanwhile.
     */
    public static synchronized void holdSingleThreaded() {
        if (!usesOpenBlas()) return;
        if (singleThreadedHolders++ == 0) {
            threadsBefore = cblas_h.openblas_get_num_threads();
            cblas_h.openblas_set_num_threads(1);
        }
    }

    public static synchronized void releaseSingleThreaded() {
        if (!usesOpenBlas() || singleThreadedHolders == 0) return;
        if (--singleThreadedHolders == 0) cblas_h.openblas_set_num_threads(threadsBefore);
    }

    /** What gemm runs on, in words, for reports. */
    public static String provider() {
        if (FORCE_JAVA) return "pure Java (forced by -Ddistill4j.blas.java=true)";
        if (!OPENBLAS.isLoaded()) return "pure Java (OpenBLAS unavailable: " + OPENBLAS.failure().orElseThrow().getMessage() + ")";
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
        if (usesOpenBlas() && m == 1 && !transA && transB) {
            // One row through a linear layer, c = alpha B a + beta c with B [n, k]: gemv reads B once
            // and packs nothing (sgemm packs B on every call), which is what batch-1 latency wants.
            cblas_h.cblas_sgemv(cblas_h.CblasRowMajor, cblas_h.CblasNoTrans, n, k, alpha, b, ldb, a, 1, beta, c, 1);
        } else if (usesOpenBlas()) {
            cblas_h.cblas_sgemm(cblas_h.CblasRowMajor, transA ? cblas_h.CblasTrans : cblas_h.CblasNoTrans,
                transB ? cblas_h.CblasTrans : cblas_h.CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        } else {
            javaSgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
    }

    private static void checkExtent(String name, MemorySegment s, int rows, int cols, int ld) {
        if (ld < Math.max(1, cols)) throw new IllegalArgumentException("gemm: leading dimension of " + name + " is " + ld + ", needs >= " + cols);
        long needed = rows == 0 ? 0 : ((long) (rows - 1) * ld + cols) * Float.BYTES;
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
