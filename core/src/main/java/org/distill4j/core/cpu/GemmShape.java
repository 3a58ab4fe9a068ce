package org.distill4j.core.cpu;

import java.util.Arrays;
import org.distill4j.core.Tensor;

/**
 * The m, n, k and batch count of C = op(A) op(B), checked: 2-D operands, or 3-D with one shared
 * leading batch dimension. Public for the CUDA backend, which checks shapes the same way.
 */
public record GemmShape(int batch, int m, int n, int k) {
    public static GemmShape of(boolean transA, boolean transB, Tensor a, Tensor b, Tensor c) {
        int rank = a.rank();
        if ((rank != 2 && rank != 3) || b.rank() != rank || c.rank() != rank) {
            throw new IllegalArgumentException("gemm: operands must all be 2-D or all 3-D, got A " + Arrays.toString(a.shape())
                + ", B " + Arrays.toString(b.shape()) + ", C " + Arrays.toString(c.shape()));
        }
        int o = rank - 2;
        long batch = rank == 3 ? a.size(0) : 1;
        if (rank == 3 && (b.size(0) != batch || c.size(0) != batch)) {
            throw new IllegalArgumentException("gemm: batch sizes differ: A " + Arrays.toString(a.shape()) + ", B " + Arrays.toString(b.shape())
                + ", C " + Arrays.toString(c.shape()));
        }
        long m = transA ? a.size(o + 1) : a.size(o), k = transA ? a.size(o) : a.size(o + 1);
        long kb = transB ? b.size(o + 1) : b.size(o), n = transB ? b.size(o) : b.size(o + 1);
        if (k != kb || c.size(o) != m || c.size(o + 1) != n) {
            throw new IllegalArgumentException("gemm: shapes do not chain: op(A) " + m + "x" + k + " (A " + Arrays.toString(a.shape())
                + (transA ? ", transposed" : "") + "), op(B) " + kb + "x" + n + " (B " + Arrays.toString(b.shape()) + (transB ? ", transposed" : "")
                + "), C " + Arrays.toString(c.shape()));
        }
        if (m > Integer.MAX_VALUE || n > Integer.MAX_VALUE || k > Integer.MAX_VALUE) throw new IllegalArgumentException("gemm: dimension exceeds 2^31 - 1");
        return new GemmShape((int) batch, (int) m, (int) n, (int) k);
    }
}
