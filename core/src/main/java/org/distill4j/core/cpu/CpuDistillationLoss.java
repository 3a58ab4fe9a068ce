package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.MemorySegment;
import java.util.stream.IntStream;
import org.distill4j.core.Bf16;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;

/**
 * The fused distillation loss on the CPU: one task per row, all arithmetic in double, everything
 * in log space (log p = s/T - lse(s/T), never log(exp(...))), so logits of +-1e4 at T = 0.1 stay
 * finite. This is the oracle for the CUDA kernel (docs/distillation-loss.md has the derivation).
 */
final class CpuDistillationLoss {
    private CpuDistillationLoss() {}

    /** Per-thread row scratch: exp((s - max)/T), exp((t - max)/T), exp(s - max). */
    private static final ThreadLocal<double[][]> SCRATCH = ThreadLocal.withInitial(() -> new double[][] {new double[0], new double[0], new double[0]});

    /** Per-row results: weighted soft and hard terms before normalisation; counted = 0 or 1. */
    record Row(double soft, double hard, int counted) {}

    static double[] compute(MemorySegment s, MemorySegment t, MemorySegment labels, int rows, int cols, DistillationLoss cfg,
                            long normalizer, MemorySegment grad, boolean bf16) {
        double norm = divisor(labels, rows, cols, cfg, normalizer);
        double scale = norm == 0 ? 0 : 1 / norm;
        Row[] out = new Row[rows];
        IntStream.range(0, rows).parallel().forEach(r -> out[r] = row(s, t, labels, r, cols, cfg, scale, grad, bf16));
        double soft = 0, hard = 0;
        for (Row row : out) {
            soft += row.soft();
            hard += row.hard();
        }
        return result(soft, hard, norm);
    }

    /** {loss, soft, hard}: the weighted sums over rows divided by norm; NaN when no row counts (PyTorch's mean over nothing). */
    static double[] result(double soft, double hard, double norm) {
        if (norm == 0) return new double[] {Double.NaN, Double.NaN, Double.NaN};
        double scale = 1 / norm;
        return new double[] {(soft + hard) * scale, soft * scale, hard * scale};
    }

    /** N: the caller's normalizer, or else the rows that count ({@link #countedRows}). */
    static double divisor(MemorySegment labels, int rows, int cols, DistillationLoss cfg, long normalizer) {
        long counted = countedRows(labels, rows, cols, cfg);
        return normalizer > 0 ? normalizer : counted;
    }

    /**
     * The rows that count: every row without labels, else those whose label is not ignore_index;
     * a label outside [0, cols) that is not ignore_index is an error naming the row.
     */
    private static long countedRows(MemorySegment labels, int rows, int cols, DistillationLoss cfg) {
        if (labels == null) return rows;
        long counted = 0;
        for (int r = 0; r < rows; r++) {
            long y = labels.getAtIndex(JAVA_LONG, r);
            if (y == cfg.ignoreIndex()) continue;
            if (y < 0 || y >= cols) {
                throw new IllegalArgumentException("distillationLoss: label " + y + " at row " + r + " is outside [0, " + cols + ") and is not ignore_index "
                    + cfg.ignoreIndex());
            }
            counted++;
        }
        return counted;
    }

    /** Row r in double: its weighted soft term (alpha T^2 D) and hard term ((1 - alpha) CE), and its gradient row when grad is given. */
    static Row row(MemorySegment s, MemorySegment t, MemorySegment labels, int r, int cols, DistillationLoss cfg, double scale,
                           MemorySegment grad, boolean bf16) {
        long base = (long) r * cols;
        long y = labels == null ? -1 : labels.getAtIndex(JAVA_LONG, r);
        if (labels != null && y == cfg.ignoreIndex()) {
            if (grad != null) for (int c = 0; c < cols; c++) store(grad, base + c, 0f, bf16);
            return new Row(0, 0, 0);
        }
        double invT = 1.0 / cfg.temperature(), alpha = cfg.alpha(), beta = cfg.beta();
        Divergence div = cfg.effectiveDivergence();
        boolean hardTerm = labels != null && alpha < 1;
        // Pass 1: the three log-sum-exps, s/T, t/T and s (T = 1, for cross-entropy).
        double maxA = Double.NEGATIVE_INFINITY, maxB = Double.NEGATIVE_INFINITY, maxS = Double.NEGATIVE_INFINITY;
        for (int c = 0; c < cols; c++) {
            double sv = load(s, base + c, bf16), tv = load(t, base + c, bf16);
            maxA = Math.max(maxA, sv * invT);
            maxB = Math.max(maxB, tv * invT);
            maxS = Math.max(maxS, sv);
        }
        // The exponentials are kept per row (thread-local scratch): p, q and softmax(s) below are
        // these divided by their sums, so each element costs three exps in all, not eight.
        double[][] scratch = SCRATCH.get();
        if (scratch[0].length < cols) {
            scratch = new double[][] {new double[cols], new double[cols], new double[cols]};
            SCRATCH.set(scratch);
        }
        double[] ea = scratch[0], eb = scratch[1], e1 = scratch[2];
        double sumA = 0, sumB = 0, sumS = 0;
        for (int c = 0; c < cols; c++) {
            double sv = load(s, base + c, bf16), tv = load(t, base + c, bf16);
            sumA += ea[c] = Math.exp(sv * invT - maxA);
            sumB += eb[c] = Math.exp(tv * invT - maxB);
            if (hardTerm) sumS += e1[c] = Math.exp(sv - maxS);
        }
        double invSumA = 1 / sumA, invSumB = 1 / sumB, invSumS = hardTerm ? 1 / sumS : 0;
        double lseA = maxA + Math.log(sumA), lseB = maxB + Math.log(sumB), lseS = hardTerm ? maxS + Math.log(sumS) : 0;
        double logOneMinusBeta = Math.log1p(-beta), logBeta = Math.log(beta);
        // Pass 2: the soft term, and for reverse KL / JSD the row constant sum_i p_i g_i of the gradient.
        double d = 0, pg = 0;
        for (int c = 0; c < cols; c++) {
            double sv = load(s, base + c, bf16), tv = load(t, base + c, bf16);
            double logP = sv * invT - lseA, logQ = tv * invT - lseB;
            double p = ea[c] * invSumA, q = eb[c] * invSumB;
            // !(x <= 0), not x > 0: a term with q = 0 is 0 (its log is -inf), but a NaN makes D NaN,
            // as in PyTorch (a NaN logit must not vanish from the loss).
            switch (div) {
                case KL -> { if (!(q <= 0)) d += q * (logQ - logP); }
                case REVERSE_KL -> {
                    if (!(p <= 0)) d += p * (logP - logQ);
                    pg += p * (logP - logQ);
                }
                case JSD -> {
                    double logM = logAddExp(logOneMinusBeta + logP, logBeta + logQ);
                    if (!(q <= 0)) d += beta * q * (logQ - logM);
                    if (!(p <= 0)) d += (1 - beta) * p * (logP - logM);
                    pg += p * (1 - beta) * (logP - logM);
                }
                case MSE -> {
                    double diff = (sv - tv) * invT;
                    d += diff * diff / cols;
                }
            }
        }
        double t2 = (double) cfg.temperature() * cfg.temperature();
        double soft = alpha * t2 * d;
        double hard = hardTerm ? (1 - alpha) * -(load(s, base + y, bf16) - lseS) : 0;
        if (grad != null) {
            // Pass 3: dL/ds_j = [alpha T dD/da_j + (1 - alpha)(softmax(s)_j - [j == y])] / normalizer, a = s/T.
            double kSoft = alpha * cfg.temperature();
            for (int c = 0; c < cols; c++) {
                double sv = load(s, base + c, bf16), tv = load(t, base + c, bf16);
                double logP = sv * invT - lseA, logQ = tv * invT - lseB;
                double p = ea[c] * invSumA, q = eb[c] * invSumB;
                double dDda = switch (div) {
                    case KL -> p - q;
                    case REVERSE_KL -> p * ((logP - logQ) - pg);
                    case JSD -> p * ((1 - beta) * (logP - logAddExp(logOneMinusBeta + logP, logBeta + logQ)) - pg);
                    case MSE -> 2 * (sv - tv) * invT / cols;
                };
                double g = kSoft * dDda;
                if (hardTerm) g += (1 - alpha) * (e1[c] * invSumS - (c == y ? 1 : 0));
                store(grad, base + c, (float) (g * scale), bf16);
            }
        }
        return new Row(soft, hard, 1);
    }

    /** Element i of F32 or BF16 logits, widened exactly to float. */
    static float load(MemorySegment m, long i, boolean bf16) {
        return bf16 ? Bf16.toFloat(m.getAtIndex(JAVA_SHORT, i)) : m.getAtIndex(JAVA_FLOAT, i);
    }

    /** Stores a gradient element: as is, or rounded to BF16 to nearest even (as the CUDA kernel's __float2bfloat16_rn). */
    private static void store(MemorySegment m, long i, float v, boolean bf16) {
        if (bf16) m.setAtIndex(JAVA_SHORT, i, Bf16.fromFloat(v));
        else m.setAtIndex(JAVA_FLOAT, i, v);
    }

    /** log(exp(a) + exp(b)), stable, with -inf handled. */
    static double logAddExp(double a, double b) {
        if (a == Double.NEGATIVE_INFINITY) return b;
        if (b == Double.NEGATIVE_INFINITY) return a;
        double m = Math.max(a, b);
        return m + Math.log1p(Math.exp(-Math.abs(a - b)));
    }
}
