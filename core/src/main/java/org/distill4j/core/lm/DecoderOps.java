package org.distill4j.core.lm;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.ForkJoinPool;
import java.util.stream.IntStream;
import org.distill4j.core.Bf16;
import org.distill4j.core.cpu.CpuBlas;

/**
 * The decoder's ops on the CPU, each an explicit forward and backward over float32 segments, in
 * the manner of llm.c's train_gpt2.c. Shapes are given on every buffer; N is the number of token
 * rows (B * T). Sums accumulate in double; gemms go to OpenBLAS through {@link CpuBlas} with
 * leading dimensions, so q, k and v are read in place from the [N, q | k | v] projection buffer
 * without transposing. Backward functions accumulate (+=) into parameter gradients and write
 * (=) input gradients unless they say otherwise. No argument checks: {@link DecoderModel} sizes
 * every buffer once.
 *
 * <p>The loops run across the common fork-join pool ({@link #parallel}): rows split over the
 * workers where each row is independent; sums over rows (a weight's or bias's gradient) split
 * over columns instead, so no two threads write the same element and each column's sum is taken
 * in the same order whatever the thread count (results do not depend on the number of cores).
 * Segments must therefore come from shared arenas.
 */
final class DecoderOps {
    private DecoderOps() {}

    /** A loop body over [lo, hi). */
    @FunctionalInterface
    interface Range {
        void run(long lo, long hi);
    }

    /**
     * Work (items times elements per item) below which one thread beats forking: about 50 us of
     * simple loop. {@code -Ddistill4j.lm.parallelWork=1} splits every loop; DecoderOpsTest runs
     * each op both ways through {@link #setParallelWork}. Volatile, read once per call.
     */
    private static volatile long parallelWork = Long.getLong("distill4j.lm.parallelWork", 1 << 16);

    /** Sets the threshold of {@link #parallel} (1: split every loop, even a tiny test's); returns the previous one. For tests. */
    static long setParallelWork(long work) {
        long old = parallelWork;
        parallelWork = work;
        return old;
    }

    /**
     * Runs body over [0, n) in contiguous chunks across the common fork-join pool (the caller
     * works too) when n * costPerItem is large enough; else on the caller's thread in one call.
     * A few chunks per worker balance uneven rows (causal attention) without many small tasks.
     */
    static void parallel(long n, long costPerItem, Range body) {
        int workers = ForkJoinPool.getCommonPoolParallelism() + 1;
        if (n < 2 || workers < 2 || n * costPerItem < parallelWork) {
            body.run(0, n);
            return;
        }
        int chunks = (int) Math.min(n, 4L * workers);
        IntStream.range(0, chunks).parallel().forEach(c -> body.run(n * c / chunks, n * (c + 1) / chunks));
    }

    static float f(MemorySegment s, long i) {
        return s.getAtIndex(JAVA_FLOAT, i);
    }

    static void set(MemorySegment s, long i, float v) {
        s.setAtIndex(JAVA_FLOAT, i, v);
    }

    static void add(MemorySegment s, long i, float v) {
        s.setAtIndex(JAVA_FLOAT, i, s.getAtIndex(JAVA_FLOAT, i) + v);
    }

    /**
     * C [m, n] = alpha op(A) op(B) + beta C as {@link CpuBlas#sgemm}, with the larger of C's two
     * dimensions split into one contiguous block per fork-join worker, each block one
     * single-threaded OpenBLAS call. Why not OpenBLAS's own threads: on this decoder's shapes
     * (M = B * T = 256, K up to the 50k vocabulary) they were up to 1.7x slower (lm_head's
     * dx = dlogits E: 401 against 237 ms; c_proj's forward 22-80 against 13-15 ms, 2 cores,
     * 2026-12-06), and their spin-waiting competes with our own parallel loops. Blocks of rows
     * when m >= n (each worker reads its rows of A and all of B), else of columns.
     */
    static void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda, MemorySegment b, int ldb, float beta,
                     MemorySegment c, int ldc) {
        gemm(false, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    /**
     * {@link #gemm} with A and B bfloat16 when {@code bf16} ({@link CpuBlas#gemmBf16}: exact
     * products summed in float32 into a float32 C; alpha must then be 1), split the same way.
     */
    static void gemm(boolean bf16, boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda, MemorySegment b, int ldb,
                     float beta, MemorySegment c, int ldc) {
        if (bf16 && alpha != 1f) throw new IllegalArgumentException("bf16 gemm: alpha must be 1, got " + alpha);
        long ab = bf16 ? Short.BYTES : Float.BYTES; // bytes of an element of A and B
        int parts = ForkJoinPool.getCommonPoolParallelism() + 1;
        boolean byRows = m >= n;
        int split = byRows ? m : n;
        if (parts < 2 || split < 2 * parts || (long) m * n * k < 16 * parallelWork) {
            gemmBlock(bf16, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            return;
        }
        int align = split >= 16 * parts ? 16 : 1; // block edges on 64-byte boundaries where the size allows
        CpuBlas.holdSingleThreaded();
        try {
            IntStream.range(0, parts).parallel().forEach(p -> {
                int lo = (int) ((long) split * p / parts) / align * align;
                int hi = p == parts - 1 ? split : (int) ((long) split * (p + 1) / parts) / align * align;
                if (hi <= lo) return;
                if (byRows) {
                    // Rows [lo, hi) of C and of op(A): A's rows, or A's columns when transposed.
                    MemorySegment ap = a.asSlice((transA ? lo : (long) lo * lda) * ab);
                    gemmBlock(bf16, transA, transB, hi - lo, n, k, alpha, ap, lda, b, ldb, beta, c.asSlice((long) lo * ldc * Float.BYTES), ldc);
                } else {
                    // Columns [lo, hi) of C and of op(B): B's columns, or B's rows when transposed.
                    MemorySegment bp = b.asSlice((transB ? (long) lo * ldb : lo) * ab);
                    gemmBlock(bf16, transA, transB, m, hi - lo, k, alpha, a, lda, bp, ldb, beta, c.asSlice((long) lo * Float.BYTES), ldc);
                }
            });
        } finally {
            CpuBlas.releaseSingleThreaded();
        }
    }

    private static void gemmBlock(boolean bf16, boolean transA, boolean transB, int m, int n, int k, float alpha, MemorySegment a, int lda,
                                  MemorySegment b, int ldb, float beta, MemorySegment c, int ldc) {
        if (bf16) CpuBlas.gemmBf16(transA, transB, m, n, k, a, lda, b, ldb, beta, c, ldc);
        else CpuBlas.sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    /** Columns [col, end) of a row-major matrix: the segment from element {@code col} on (gemm reads it with the matrix's leading dimension). */
    static MemorySegment columns(MemorySegment m, long col) {
        return m.asSlice(col * Float.BYTES);
    }

    // ---- embeddings

    /** out [N, D] = wte [V, D] rows of ids [N] (+ wpe [P, D] rows of positions [N] when wpe is not null). */
    static void embeddingForward(MemorySegment out, long[] ids, long[] positions, MemorySegment wte, MemorySegment wpe, long d) {
        embeddingForward(out, ids, positions, wte, false, wpe, d);
    }

    /** As above with wte bfloat16 when {@code wteBf16} (a frozen bf16 model's table; each value widened exactly). */
    static void embeddingForward(MemorySegment out, long[] ids, long[] positions, MemorySegment wte, boolean wteBf16, MemorySegment wpe, long d) {
        if (wteBf16) {
            parallel(ids.length, d, (lo, hi) -> {
                for (int r = (int) lo; r < hi; r++) {
                    long o = r * d, t = ids[r] * d, p = wpe == null ? 0 : positions[r] * d;
                    for (long j = 0; j < d; j++) set(out, o + j, Bf16.toFloat(wte.getAtIndex(JAVA_SHORT, t + j)) + (wpe == null ? 0f : f(wpe, p + j)));
                }
            });
            return;
        }
        parallel(ids.length, d, (lo, hi) -> {
            for (int r = (int) lo; r < hi; r++) {
                long o = r * d, t = ids[r] * d;
                if (wpe == null) {
                    MemorySegment.copy(wte, t * Float.BYTES, out, o * Float.BYTES, d * Float.BYTES);
                    continue;
                }
                long p = positions[r] * d;
                for (long j = 0; j < d; j++) set(out, o + j, f(wte, t + j) + f(wpe, p + j));
            }
        });
    }

    /** dwte [V, D] += dout [N, D] scattered to rows ids [N]; dwpe [P, D] likewise by positions (when not null). */
    static void embeddingBackward(MemorySegment dwte, MemorySegment dwpe, MemorySegment dout, long[] ids, long[] positions, long d) {
        // Split over columns: a token id may repeat, so two rows can land on the same row of dwte.
        parallel(d, ids.length * 2L, (lo, hi) -> {
            for (int r = 0; r < ids.length; r++) {
                long o = r * d, t = ids[r] * d;
                for (long j = lo; j < hi; j++) add(dwte, t + j, f(dout, o + j));
                if (dwpe != null) {
                    long p = positions[r] * d;
                    for (long j = lo; j < hi; j++) add(dwpe, p + j, f(dout, o + j));
                }
            }
        });
    }

    // ---- norms over the last axis of rows [N, D] (fp32 values, double sums)

    /** LayerNorm: out [N, D] = (x - mean) * rstd * w + b; saves mean [N] and rstd [N] = 1 / sqrt(var + eps) (biased var). */
    static void layerNormForward(MemorySegment out, MemorySegment mean, MemorySegment rstd, MemorySegment x, MemorySegment w, MemorySegment b,
                                 long n, long d, float eps) {
        parallel(n, d * 4, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                long o = r * d;
                double sum = 0;
                for (long j = 0; j < d; j++) sum += f(x, o + j);
                double m = sum / d, var = 0;
                for (long j = 0; j < d; j++) {
                    double c = f(x, o + j) - m;
                    var += c * c;
                }
                double s = 1 / Math.sqrt(var / d + eps);
                for (long j = 0; j < d; j++) set(out, o + j, (float) ((f(x, o + j) - m) * s * f(w, j) + (b == null ? 0 : f(b, j))));
                if (mean != null) set(mean, r, (float) m);
                if (rstd != null) set(rstd, r, (float) s);
            }
        });
    }

    /**
     * LayerNorm backward: dx [N, D] (+)= rstd (g - mean(g) - xhat mean(g xhat)) with g = w dout and
     * xhat = (x - mean) rstd; dw [D] += sum dout xhat; db [D] += sum dout.
     */
    static void layerNormBackward(MemorySegment dx, MemorySegment dw, MemorySegment db, MemorySegment dout, MemorySegment x, MemorySegment w,
                                  MemorySegment mean, MemorySegment rstd, long n, long d, boolean accumulate) {
        // dx: rows in parallel. dx may be dout itself only when the row's reads come first (they do).
        parallel(n, d * 6, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                long o = r * d;
                double m = f(mean, r), s = f(rstd, r), gMean = 0, gxMean = 0;
                for (long j = 0; j < d; j++) {
                    double xhat = (f(x, o + j) - m) * s, g = (double) f(w, j) * f(dout, o + j);
                    gMean += g;
                    gxMean += g * xhat;
                }
                gMean /= d;
                gxMean /= d;
                for (long j = 0; j < d; j++) {
                    double xhat = (f(x, o + j) - m) * s, dy = f(dout, o + j), g = f(w, j) * dy;
                    float v = (float) (s * (g - gMean - xhat * gxMean));
                    set(dx, o + j, accumulate ? f(dx, o + j) + v : v);
                }
            }
        });
        // dw, db: sums over rows, columns in parallel (each column summed in row order, in double).
        parallel(d, n * 3, (lo, hi) -> {
            double[] sw = new double[(int) (hi - lo)], sb = new double[(int) (hi - lo)];
            for (long r = 0; r < n; r++) {
                long o = r * d;
                double m = f(mean, r), s = f(rstd, r);
                for (long j = lo; j < hi; j++) {
                    double dy = f(dout, o + j);
                    sw[(int) (j - lo)] += dy * ((f(x, o + j) - m) * s);
                    sb[(int) (j - lo)] += dy;
                }
            }
            for (long j = lo; j < hi; j++) {
                add(dw, j, (float) sw[(int) (j - lo)]);
                if (db != null) add(db, j, (float) sb[(int) (j - lo)]);
            }
        });
    }

    /**
     * RMSNorm on rows of x: out = x * rstd * w, rstd [N] = 1 / sqrt(mean(x^2) + eps). Rows are
     * {@code d} wide and {@code stride} apart, starting at x's and out's first element (Qwen3's per-head
     * q/k norm runs it over the heads of the q | k | v buffer: one row per token and head).
     */
    static void rmsNormForward(MemorySegment out, MemorySegment rstd, MemorySegment x, MemorySegment w, long n, long d, long stride, float eps) {
        parallel(n, d * 3, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                long o = r * stride;
                double ss = 0;
                for (long j = 0; j < d; j++) {
                    double v = f(x, o + j);
                    ss += v * v;
                }
                double s = 1 / Math.sqrt(ss / d + eps);
                // As transformers: the normalised value is rounded to the input dtype (fp32) before the weight multiplies it.
                for (long j = 0; j < d; j++) set(out, o + j, f(w, j) * (float) (f(x, o + j) * s));
                if (rstd != null) set(rstd, r, (float) s);
            }
        });
    }

    /** RMSNorm backward: dx = rstd g - x rstd^3 mean(g x), g = w dout; dw += sum dout x rstd. Strided rows as the forward. */
    static void rmsNormBackward(MemorySegment dx, MemorySegment dw, MemorySegment dout, MemorySegment x, MemorySegment w, MemorySegment rstd,
                                long n, long d, long stride, boolean accumulate) {
        // dw first: dx may be dout itself (Qwen3's head norm runs in place), and dw reads dout.
        parallel(d, n * 3, (lo, hi) -> {
            double[] sw = new double[(int) (hi - lo)];
            for (long r = 0; r < n; r++) {
                long o = r * stride;
                double s = f(rstd, r);
                for (long j = lo; j < hi; j++) sw[(int) (j - lo)] += f(dout, o + j) * (f(x, o + j) * s);
            }
            for (long j = lo; j < hi; j++) add(dw, j, (float) sw[(int) (j - lo)]);
        });
        parallel(n, d * 5, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                long o = r * stride;
                double s = f(rstd, r), gx = 0;
                for (long j = 0; j < d; j++) gx += (double) f(w, j) * f(dout, o + j) * f(x, o + j);
                gx /= d;
                for (long j = 0; j < d; j++) {
                    double xv = f(x, o + j), dy = f(dout, o + j);
                    float v = (float) (s * f(w, j) * dy - xv * s * s * s * gx);
                    set(dx, o + j, accumulate ? f(dx, o + j) + v : v);
                }
            }
        });
    }

    // ---- projections

    /**
     * out [N, p.out] (columns [col, col + out) of a buffer with row stride ldOut) = x [N, in] W^T + b
     * for W [out, in] (nn.Linear), or x W for W [in, out] (GPT-2's Conv1D).
     */
    static void projectionForward(MemorySegment out, long col, long ldOut, MemorySegment x, long ldX, MemorySegment w, MemorySegment b,
                                  long n, long in, long outF, boolean storedInOut) {
        projectionForward(out, col, ldOut, x, ldX, w, false, b, n, in, outF, storedInOut);
    }

    /**
     * As above; with {@code wBf16} the weight is bfloat16 (a frozen bf16 model): x is rounded to
     * bfloat16 first (nearest even, as CudaDecoderOps rounds it for cublasGemmEx, into a scratch
     * [N, in] of this call's arena), the products are exact and the sums float32, out and b float32.
     */
    static void projectionForward(MemorySegment out, long col, long ldOut, MemorySegment x, long ldX, MemorySegment w, boolean wBf16, MemorySegment b,
                                  long n, long in, long outF, boolean storedInOut) {
        MemorySegment o = columns(out, col);
        if (wBf16) {
            try (Arena arena = Arena.ofShared()) {
                MemorySegment xh = arena.allocate(n * in * Short.BYTES, 64);
                parallel(n, in, (lo, hi) -> {
                    for (long r = lo; r < hi; r++) for (long j = 0; j < in; j++) xh.setAtIndex(JAVA_SHORT, r * in + j, Bf16.fromFloat(f(x, r * ldX + j)));
                });
                gemm(true, false, !storedInOut, i(n), i(outF), i(in), 1f, xh, i(in), w, i(storedInOut ? outF : in), 0f, o, i(ldOut));
            }
        } else {
            gemm(false, !storedInOut, i(n), i(outF), i(in), 1f, x, i(ldX), w, i(storedInOut ? outF : in), 0f, o, i(ldOut));
        }
        if (b != null) {
            parallel(n, outF, (lo, hi) -> {
                for (long r = lo; r < hi; r++) for (long j = 0; j < outF; j++) add(o, r * ldOut + j, f(b, j));
            });
        }
    }

    /**
     * Projection backward: dW += dout^T x ([out, in]) or x^T dout ([in, out]); db [out] += column sums
     * of dout; dx [N, in] = dout W (or dout W^T), added to dx when {@code accumulateDx} (q, k and v
     * share their input). dx may be null (nothing before needs it).
     */
    static void projectionBackward(MemorySegment dx, long ldDx, boolean accumulateDx, MemorySegment dw, MemorySegment db, MemorySegment dout,
                                   long col, long ldOut, MemorySegment x, long ldX, MemorySegment w, long n, long in, long outF, boolean storedInOut) {
        MemorySegment g = columns(dout, col);
        if (storedInOut) {
            gemm(true, false, i(in), i(outF), i(n), 1f, x, i(ldX), g, i(ldOut), 1f, dw, i(outF));
        } else {
            gemm(true, false, i(outF), i(in), i(n), 1f, g, i(ldOut), x, i(ldX), 1f, dw, i(in));
        }
        if (db != null) {
            // Column sums, read row by row (a column walk would stride a cache line per element).
            parallel(outF, n, (lo, hi) -> {
                double[] sums = new double[(int) (hi - lo)];
                for (long r = 0; r < n; r++) for (long j = lo; j < hi; j++) sums[(int) (j - lo)] += f(g, r * ldOut + j);
                for (long j = lo; j < hi; j++) add(db, j, (float) sums[(int) (j - lo)]);
            });
        }
        if (dx != null) {
            gemm(false, storedInOut, i(n), i(in), i(outF), 1f, g, i(ldOut), w, i(storedInOut ? outF : in), accumulateDx ? 1f : 0f, dx, i(ldDx));
        }
    }

    // ---- rotary embeddings

    /**
     * cos, sin [N, half] for positions [N]: angle = position * invFreq[j] in float32, as
     * transformers computes its tables (half = headDim / 2; HF's table repeats them for the second half).
     */
    static void ropeTables(MemorySegment cos, MemorySegment sin, long[] positions, float[] invFreq) {
        int half = invFreq.length;
        for (int r = 0; r < positions.length; r++) {
            for (int j = 0; j < half; j++) {
                float angle = (float) positions[r] * invFreq[j];
                set(cos, (long) r * half + j, (float) Math.cos(angle));
                set(sin, (long) r * half + j, (float) Math.sin(angle));
            }
        }
    }

    /**
     * Rotates, in place, {@code heads} heads of width 2 * half starting at column {@code col} of
     * x [N, stride]: (a, b) = (x[j], x[j + half]) becomes (a cos - b sin, b cos + a sin), HF's
     * rotate_half pairing. {@code inverse} rotates by -angle: the backward (a rotation's
     * transpose is its inverse).
     */
    static void rope(MemorySegment x, long col, long stride, long n, long heads, MemorySegment cos, MemorySegment sin, long half, boolean inverse) {
        float sign = inverse ? -1f : 1f;
        parallel(n, heads * half * 2, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                for (long h = 0; h < heads; h++) {
                    long o = r * stride + col + h * 2 * half;
                    for (long j = 0; j < half; j++) {
                        float c = f(cos, r * half + j), s = sign * f(sin, r * half + j);
                        float a = f(x, o + j), b = f(x, o + j + half);
                        set(x, o + j, a * c - b * s);
                        set(x, o + j + half, b * c + a * s);
                    }
                }
            }
        });
    }

    // ---- attention

    /**
     * Where a sequence's queries and keys live. Query row i of batch b is token i of this call;
     * key row j is token j of the whole sequence so far (a cache's past, then this call's tokens):
     * query i sits at absolute position past + i and sees keys j <= past + i whose mask entry is
     * not 0.
     *
     * @param q        queries of head h at q[(b * tq + i) * ldQ + qCol + h * hd]
     * @param k        keys of kv head g at k[b * kBatch + j * ldK + kCol + g * hd]
     * @param v        values likewise (ldK, kBatch, vCol)
     * @param keyMask  [B, tk] with 0 on padding, or null (every key is real)
     */
    record AttentionShape(int batch, int heads, int kvHeads, long hd, long tq, long tk, long past, MemorySegment q, long ldQ, long qCol,
                          MemorySegment k, MemorySegment v, long ldK, long kBatch, long kCol, long vCol, long[] keyMask, float scale) {
        boolean visible(int b, long i, long j) {
            return j <= past + i && (keyMask == null || keyMask[(int) (b * tk + j)] != 0);
        }

        MemorySegment qOf(int b, int h) {
            return q.asSlice(((b * tq) * ldQ + qCol + h * hd) * Float.BYTES);
        }

        /** Element offset of batch b's keys (or values) of the kv head query head h reads (GQA: h / (heads / kvHeads)), before kCol/vCol. */
        long kvBase(int b, int h) {
            return b * kBatch + (long) (h / (heads / kvHeads)) * hd;
        }

        MemorySegment kOf(int b, int h) {
            return k.asSlice((kvBase(b, h) + kCol) * Float.BYTES);
        }

        MemorySegment vOf(int b, int h) {
            return v.asSlice((kvBase(b, h) + vCol) * Float.BYTES);
        }
    }

    /**
     * Runs task(0 .. n - 1) across the common fork-join pool with OpenBLAS at one thread per call
     * while they run (then its previous count again): attention's per-head gemms are small
     * (T x T x headDim), so heads side by side use the cores better than OpenBLAS splitting each
     * small gemm, and OpenBLAS's pool would queue callers from several threads (see
     * CpuBlas#holdSingleThreaded). Serial, with OpenBLAS as it is, when the work is small.
     */
    static void parallelTasks(int n, long costPerTask, java.util.function.IntConsumer task) {
        int workers = ForkJoinPool.getCommonPoolParallelism() + 1;
        if (n < 2 || workers < 2 || n * costPerTask < parallelWork) {
            for (int k = 0; k < n; k++) task.accept(k);
            return;
        }
        CpuBlas.holdSingleThreaded();
        try {
            IntStream.range(0, n).parallel().forEach(task);
        } finally {
            CpuBlas.releaseSingleThreaded();
        }
    }

    /**
     * probs [B, H, tq, tk] = softmax(scale q k^T + mask) over visible keys (a query that sees no key
     * gets a row of zeros); out [B * tq, H * hd] = probs v, or (dropped [B, H, tq, tk]) v when
     * {@code dropped} is not null (attention dropout, applied by the caller between the two halves
     * via {@link #attentionScores} and {@link #attentionValues}). One task per (batch, head): the
     * scores gemm, then the masked softmax of its plane while the plane is in cache; keys past the
     * causal limit are skipped rather than tested (about half the plane).
     */
    static void attentionScores(AttentionShape a, MemorySegment probs) {
        long plane = a.tq() * a.tk();
        parallelTasks(a.batch() * a.heads(), plane * (a.hd() + 3), task -> {
            int b = task / a.heads(), h = task % a.heads();
            long base = (long) task * plane;
            MemorySegment p = probs.asSlice(base * Float.BYTES, plane * Float.BYTES);
            CpuBlas.sgemm(false, true, i(a.tq()), i(a.tk()), i(a.hd()), a.scale(), a.qOf(b, h), i(a.ldQ()), a.kOf(b, h), i(a.ldK()), 0f, p, i(a.tk()));
            long[] mask = a.keyMask();
            long maskRow = b * a.tk();
            for (long qi = 0; qi < a.tq(); qi++) {
                long o = qi * a.tk(), end = Math.min(a.tk(), a.past() + qi + 1);
                double max = Double.NEGATIVE_INFINITY;
                for (long j = 0; j < end; j++) if (mask == null || mask[(int) (maskRow + j)] != 0) max = Math.max(max, f(p, o + j));
                double sum = 0;
                for (long j = 0; j < end; j++) {
                    double e = mask == null || mask[(int) (maskRow + j)] != 0 ? Math.exp(f(p, o + j) - max) : 0;
                    set(p, o + j, (float) e);
                    sum += e;
                }
                double inv = sum > 0 ? 1 / sum : 0;
                for (long j = 0; j < end; j++) set(p, o + j, (float) (f(p, o + j) * inv));
                for (long j = end; j < a.tk(); j++) set(p, o + j, 0f);
            }
        });
    }

    /** out [B * tq, ldOut] (head h at columns h * hd) = probs [B, H, tq, tk] v; one task per (batch, head). */
    static void attentionValues(AttentionShape a, MemorySegment probs, MemorySegment out, long ldOut) {
        long plane = a.tq() * a.tk();
        parallelTasks(a.batch() * a.heads(), plane * a.hd(), task -> {
            int b = task / a.heads(), h = task % a.heads();
            MemorySegment p = probs.asSlice((long) task * plane * Float.BYTES, plane * Float.BYTES);
            MemorySegment o = out.asSlice((b * a.tq() * ldOut + h * a.hd()) * Float.BYTES);
            CpuBlas.sgemm(false, false, i(a.tq()), i(a.hd()), i(a.tk()), 1f, p, i(a.tk()), a.vOf(b, h), i(a.ldK()), 0f, o, i(ldOut));
        });
    }

    /**
     * Attention backward, training only (no cache: tq = tk, q, k and v in one buffer). From
     * dout [N, H * hd]: dvalues = probsUsed^T dout (probsUsed: after dropout), dprobsUsed = dout v^T
     * into {@code dprobs} [B, H, tq, tk] (the caller applies the dropout backward in place via
     * {@code beforeSoftmax}), dscores = probs (dprobs - sum(dprobs probs)) scale, dq = dscores k,
     * dk = dscores^T q. dq, dk, dv go to dqkv (same layout as the q | k | v buffer, zeroed by the
     * caller since kv heads shared by several query heads accumulate). One task per (batch, kv
     * head), which runs that kv head's query heads in order: no two tasks write the same dk or dv.
     */
    static void attentionBackward(AttentionShape a, MemorySegment probs, MemorySegment probsUsed, MemorySegment dprobs, MemorySegment dout,
                                  long ldOut, MemorySegment dqkv, Runnable beforeSoftmax) {
        long plane = a.tq() * a.tk();
        int group = a.heads() / a.kvHeads();
        parallelTasks(a.batch() * a.kvHeads(), group * plane * a.hd() * 2, task -> {
            int b = task / a.kvHeads();
            for (int h = (task % a.kvHeads()) * group, last = h + group; h < last; h++) {
                long base = ((long) b * a.heads() + h) * plane;
                MemorySegment pu = probsUsed.asSlice(base * Float.BYTES, plane * Float.BYTES);
                MemorySegment dp = dprobs.asSlice(base * Float.BYTES, plane * Float.BYTES);
                MemorySegment d = dout.asSlice((b * a.tq() * ldOut + h * a.hd()) * Float.BYTES);
                MemorySegment dv = dqkv.asSlice((a.kvBase(b, h) + a.vCol()) * Float.BYTES);
                CpuBlas.sgemm(true, false, i(a.tk()), i(a.hd()), i(a.tq()), 1f, pu, i(a.tk()), d, i(ldOut), 1f, dv, i(a.ldK()));
                CpuBlas.sgemm(false, true, i(a.tq()), i(a.tk()), i(a.hd()), 1f, d, i(ldOut), a.vOf(b, h), i(a.ldK()), 0f, dp, i(a.tk()));
            }
        });
        beforeSoftmax.run();
        float scale = a.scale();
        parallelTasks(a.batch() * a.kvHeads(), group * plane * (a.hd() * 2 + 2), task -> {
            int b = task / a.kvHeads();
            for (int h = (task % a.kvHeads()) * group, last = h + group; h < last; h++) {
                long base = ((long) b * a.heads() + h) * plane;
                MemorySegment p = probs.asSlice(base * Float.BYTES, plane * Float.BYTES);
                MemorySegment dp = dprobs.asSlice(base * Float.BYTES, plane * Float.BYTES);
                // Softmax backward; keys past the causal limit have p = 0, so their dscores are 0.
                for (long qi = 0; qi < a.tq(); qi++) {
                    long o = qi * a.tk(), end = Math.min(a.tk(), a.past() + qi + 1);
                    double dot = 0;
                    for (long j = 0; j < end; j++) dot += (double) f(dp, o + j) * f(p, o + j);
                    for (long j = 0; j < end; j++) set(dp, o + j, (float) (f(p, o + j) * (f(dp, o + j) - dot) * scale));
                    for (long j = end; j < a.tk(); j++) set(dp, o + j, 0f);
                }
                MemorySegment dq = dqkv.asSlice(((b * a.tq()) * a.ldQ() + a.qCol() + h * a.hd()) * Float.BYTES);
                MemorySegment dk = dqkv.asSlice((a.kvBase(b, h) + a.kCol()) * Float.BYTES);
                CpuBlas.sgemm(false, false, i(a.tq()), i(a.hd()), i(a.tk()), 1f, dp, i(a.tk()), a.kOf(b, h), i(a.ldK()), 1f, dq, i(a.ldQ()));
                CpuBlas.sgemm(true, false, i(a.tk()), i(a.hd()), i(a.tq()), 1f, dp, i(a.tk()), a.qOf(b, h), i(a.ldQ()), 1f, dk, i(a.ldK()));
            }
        });
    }

    // ---- MLP activations

    private static final double SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

    /**
     * tanh(u) as 1 - 2 / (1 + exp(2u)): one Math.exp is about 1.6x faster than Math.tanh on
     * Temurin 25 (9 against 15 ns per element measured), and agrees with it to double rounding
     * where it matters here (near 0 the absolute error is ~1e-16, and 1 + tanh absorbs it;
     * exp overflowing to infinity gives exactly 1).
     */
    private static double tanh(double u) {
        return 1 - 2 / (1 + Math.exp(2 * u));
    }

    /** out [N, F] = gelu_tanh(x [N, F]) (GPT-2's gelu_new), elementwise over {@code count} values. */
    static void geluForward(MemorySegment out, MemorySegment x, long count) {
        if (org.distill4j.core.cpu.OnednnEltwise.geluForward(true, x, out, count)) return; // the oneDNN engine: its vectorised gelu_tanh
        parallel(count, 16, (lo, hi) -> {
            for (long e = lo; e < hi; e++) {
                double v = f(x, e);
                set(out, e, (float) (0.5 * v * (1 + tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))));
            }
        });
    }

    /** dx = gelu_tanh'(x) dout. */
    static void geluBackward(MemorySegment dx, MemorySegment dout, MemorySegment x, long count) {
        if (org.distill4j.core.cpu.OnednnEltwise.geluBackward(true, x, dout, dx, count)) return;
        parallel(count, 16, (lo, hi) -> {
            for (long e = lo; e < hi; e++) {
                double v = f(x, e), t = tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v));
                double grad = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * v * v);
                set(dx, e, (float) (grad * f(dout, e)));
            }
        });
    }

    /** out [N, F] = silu(gate) * up, from gateUp [N, 2F] (gate in columns [0, F), up in [F, 2F)). */
    static void swigluForward(MemorySegment out, MemorySegment gateUp, long n, long features) {
        parallel(n, features * 16, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                for (long j = 0; j < features; j++) {
                    float g = f(gateUp, r * 2 * features + j), u = f(gateUp, r * 2 * features + features + j);
                    float silu = (float) (g / (1 + Math.exp(-g)));
                    set(out, r * features + j, silu * u);
                }
            }
        });
    }

    /** dgateUp [N, 2F]: dgate = dout up silu'(gate), dup = dout silu(gate); silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). */
    static void swigluBackward(MemorySegment dgateUp, MemorySegment dout, MemorySegment gateUp, long n, long features) {
        parallel(n, features * 16, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                for (long j = 0; j < features; j++) {
                    long gi = r * 2 * features + j, ui = gi + features;
                    double g = f(gateUp, gi), u = f(gateUp, ui), dy = f(dout, r * features + j);
                    double s = 1 / (1 + Math.exp(-g));
                    set(dgateUp, gi, (float) (dy * u * s * (1 + g * (1 - s))));
                    set(dgateUp, ui, (float) (dy * g * s));
                }
            }
        });
    }

    // ---- loss

    /**
     * Mean next-token cross-entropy as transformers' causal LM loss: logits [B, T, V] at position t
     * predict labels[b, t + 1]; labels -100 (and the last position) do not count. Writes dlogits
     * (same shape) = (softmax - onehot) / count at counted positions, 0 elsewhere, when not null;
     * dlogits may be logits itself (each row is read before it is overwritten), which saves a
     * [B, T, V] buffer when the logits are not needed afterwards. Rows in parallel, one exp per
     * logit (stored, then scaled by 1 / sum); the total sums the rows in order. Returns the loss
     * (NaN when nothing counts, as PyTorch).
     */
    static double nextTokenCrossEntropy(MemorySegment logits, long[] labels, int batch, long t, long vocab, MemorySegment dlogits) {
        long count = 0;
        for (int b = 0; b < batch; b++) for (long i = 0; i + 1 < t; i++) if (labels[(int) (b * t + i + 1)] != -100) count++;
        long counted = count;
        double[] rowLoss = new double[Math.toIntExact(batch * t)];
        parallel(batch * t, vocab * 3, (lo, hi) -> {
            for (long r = lo; r < hi; r++) {
                long i = r % t, row = r * vocab;
                long label = i + 1 < t ? labels[(int) (r + 1)] : -100;
                if (label == -100) {
                    if (dlogits != null) dlogits.asSlice(row * Float.BYTES, vocab * Float.BYTES).fill((byte) 0);
                    continue;
                }
                double max = Double.NEGATIVE_INFINITY;
                for (long c = 0; c < vocab; c++) max = Math.max(max, f(logits, row + c));
                double labelLogit = f(logits, row + label), sum = 0;
                if (dlogits == null) {
                    for (long c = 0; c < vocab; c++) sum += Math.exp(f(logits, row + c) - max);
                } else {
                    for (long c = 0; c < vocab; c++) {
                        double e = Math.exp(f(logits, row + c) - max);
                        set(dlogits, row + c, (float) e);
                        sum += e;
                    }
                }
                double lse = max + Math.log(sum);
                rowLoss[(int) r] = lse - labelLogit;
                if (dlogits != null) {
                    double perCount = 1.0 / counted, scale = perCount / sum;
                    for (long c = 0; c < vocab; c++) set(dlogits, row + c, (float) (f(dlogits, row + c) * scale));
                    set(dlogits, row + label, (float) ((Math.exp(labelLogit - lse) - 1) * perCount));
                }
            }
        });
        double total = 0;
        for (double v : rowLoss) total += v;
        return count == 0 ? Double.NaN : total / count;
    }

    private static int i(long v) {
        return Math.toIntExact(v);
    }
}
