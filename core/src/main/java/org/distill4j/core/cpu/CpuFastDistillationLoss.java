package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_DOUBLE;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.stream.IntStream;
import org.distill4j.bindings.Downcalls;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibrary;
import org.distill4j.bindings.cpu.distill4j_cpu_h;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;

/**
 * The fused distillation loss's float fast path on the CPU: every divergence in fp32 with
 * vectorised exponentials, in our own C kernel (native/src/main/c/distill4j_cpu_kernel.c, one copy
 * each for AVX-512, AVX2 and SSE2, the best the CPU runs unless {@value #ISA_PROPERTY} says otherwise),
 * called through the FFM API on blocks of rows in parallel. About 12 times the double oracle's
 * throughput for KL, 6-11 for reverse KL and JSD (bench/RESULTS.md; these form log p - log q,
 * the gradient's log-term and its row sum in double, as the CUDA kernel does); the oracle
 * ({@link CpuDistillationLoss}) still computes every row with a NaN or
 * infinite logit (the kernel hands those back), and everything when the library is missing.
 *
 * <p>Deterministic: rows are cut into blocks by the shape alone, each block's sums are formed in a
 * fixed order, and the blocks' are added in block order, so the thread count never changes a bit.
 */
final class CpuFastDistillationLoss {
    private CpuFastDistillationLoss() {}

    private static final NativeLibrary LIB = NativeLibraries.forBindings(NativeLibraries.Library.DISTILL4J_CPU);
    /** Elements a block of rows aims at: enough work to pay for a task and a downcall (~1 us). */
    private static final long BLOCK_ELEMENTS = 1 << 16;

    /** System property naming the kernel copy to use ("avx512", "avx2", "sse2"; default: the best the CPU runs). */
    static final String ISA_PROPERTY = "distill4j.cpu.isa";

    static {
        String isa = System.getProperty(ISA_PROPERTY);
        if (isa != null && !isa.isBlank() && LIB.isLoaded()) useIsa(isa.strip());
    }

    /** True when the kernel library loaded (it ships inside the distill4j-native jar, Linux x86-64). */
    static boolean available() {
        return LIB.isLoaded();
    }

    /**
     * Makes every later evaluation, process-wide, use the named copy of the kernel ("avx512", "avx2",
     * "sse2"; "" for the best this CPU runs): tests of each copy, benchmarks ({@value #ISA_PROPERTY}).
     */
    static void useIsa(String isa) {
        try (Arena arena = Arena.ofConfined()) {
            if (distill4j_cpu_h.d4j_cpu_use_isa(arena.allocateFrom(isa)) != distill4j_cpu_h.D4J_CPU_OK) {
                throw new IllegalArgumentException(ISA_PROPERTY + " = '" + isa + "': expected avx512, avx2 or sse2, one this CPU runs (its best: "
                    + bestIsa() + ")");
            }
        }
    }

    /** The best copy this CPU runs ("avx512", "avx2", "sse2"); requires {@link #available()}. */
    static String bestIsa() {
        return Downcalls.cString(distill4j_cpu_h.d4j_cpu_best_isa(), "d4j_cpu_best_isa");
    }

    /** Why the fast path is off on this machine, or "" when it is on. */
    static String unavailableReason() {
        return LIB.failure().map(Throwable::getMessage).orElse("");
    }

    /** The copy of the kernel in use ("avx512", "avx2", "sse2"); requires {@link #available()}. */
    static String isa() {
        return Downcalls.cString(distill4j_cpu_h.d4j_cpu_isa(), "d4j_cpu_isa");
    }

    /** Whether this evaluation can run here: the library loaded and the data in native memory (every divergence runs). */
    static boolean takes(MemorySegment s, MemorySegment t, MemorySegment labels, MemorySegment grad) {
        return available() && s.isNative() && t.isNative()
            && (labels == null || labels.isNative()) && (grad == null || grad.isNative());
    }

    /** Logits a task of the -inf check scans (a quarter of a 4096 x 1000 teacher). */
    static final long CHECK_CHUNK = 1L << 20;

    /** The C library's code for the logits' element type. */
    static int dtype(boolean bf16) {
        return bf16 ? distill4j_cpu_h.D4J_CPU_BF16 : distill4j_cpu_h.D4J_CPU_F32;
    }

    /**
     * The index of the first -inf among x's n logits, or -1 (x native, the library loaded): one
     * vectorised C pass, cut into chunks scanned in parallel on the pool the loss runs on (a
     * memory-bound pass over the whole teacher; reverse KL at 4096 x 1000 on 2 cores: 5.36 ms with
     * one serial scan, 4.70-4.89 ms so, JMH); the first chunk with one names it, as the serial scan.
     */
    static long firstNegativeInfinity(MemorySegment x, long n, boolean bf16) {
        int dtype = dtype(bf16);
        long bytes = bf16 ? 2 : 4;
        int chunks = (int) ((n + CHECK_CHUNK - 1) / CHECK_CHUNK);
        if (chunks <= 1) return distill4j_cpu_h.d4j_cpu_find_neg_inf(x, dtype, n);
        long[] found = new long[chunks];
        IntStream.range(0, chunks).parallel().forEach(c -> {
            long from = c * CHECK_CHUNK, len = Math.min(CHECK_CHUNK, n - from);
            long i = distill4j_cpu_h.d4j_cpu_find_neg_inf(x.asSlice(from * bytes, len * bytes), dtype, len);
            found[c] = i < 0 ? -1 : from + i;
        });
        for (long i : found) if (i >= 0) return i;
        return -1;
    }

    /** As {@link CpuDistillationLoss#compute}: {loss, soft, hard}, each divided by the normalizer. */
    static double[] compute(MemorySegment s, MemorySegment t, MemorySegment labels, int rows, int cols, DistillationLoss cfg,
                            long normalizer, MemorySegment grad, boolean bf16) {
        double norm = CpuDistillationLoss.divisor(labels, rows, cols, cfg, normalizer);
        double scale = norm == 0 ? 0 : 1 / norm;
        int divergence = switch (cfg.effectiveDivergence()) {
            case KL -> distill4j_cpu_h.D4J_CPU_KL;
            case REVERSE_KL -> distill4j_cpu_h.D4J_CPU_REVERSE_KL;
            case MSE -> distill4j_cpu_h.D4J_CPU_MSE;
            case JSD -> distill4j_cpu_h.D4J_CPU_JSD;  // 0 < beta < 1 here: at 0 and 1 effectiveDivergence() is KL / reverse KL
        };
        double softWeight = (double) cfg.alpha() * cfg.temperature() * cfg.temperature(), hardWeight = 1.0 - cfg.alpha();
        int blockRows = (int) Math.max(1, Math.min(rows, BLOCK_ELEMENTS / cols));
        int blocks = (rows + blockRows - 1) / blockRows;
        double[][] sums = new double[blocks][];
        IntStream.range(0, blocks).parallel().forEach(b -> {
            int row0 = b * blockRows, row1 = Math.min(rows, row0 + blockRows);
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment flags = CpuMemory.allocate(arena, row1 - row0, 1);
                MemorySegment out = CpuMemory.allocate(arena, 2 * JAVA_DOUBLE.byteSize(), JAVA_DOUBLE.byteAlignment());
                int rc = distill4j_cpu_h.d4j_cpu_kd_rows(s, t, dtype(bf16),
                    labels == null ? MemorySegment.NULL : labels, row0, row1, cols, divergence, cfg.temperature(), cfg.alpha(), cfg.beta(), cfg.ignoreIndex(),
                    (float) scale, grad == null ? MemorySegment.NULL : grad, flags, out);
                if (rc != distill4j_cpu_h.D4J_CPU_OK) {
                    throw new IllegalStateException("d4j_cpu_kd_rows(rows " + row0 + ".." + row1 + " of [" + rows + ", " + cols + "]) returned " + rc
                        + (rc == distill4j_cpu_h.D4J_CPU_OUT_OF_MEMORY ? " (out of memory for " + 24L * cols + " bytes of row scratch)" : " (bad argument)"));
                }
                double soft = softWeight * out.getAtIndex(JAVA_DOUBLE, 0), hard = hardWeight * out.getAtIndex(JAVA_DOUBLE, 1);
                // Rows the kernel handed back (a NaN or infinite logit): the oracle computes them, in row order.
                for (int r = row0; r < row1; r++) {
                    if (flags.get(JAVA_BYTE, r - row0) != 0) {
                        CpuDistillationLoss.Row row = CpuDistillationLoss.row(s, t, labels, r, cols, cfg, scale, grad, bf16);
                        soft += row.soft();
                        hard += row.hard();
                    }
                }
                sums[b] = new double[] {soft, hard};
            }
        });
        double soft = 0, hard = 0;
        for (double[] sum : sums) {
            soft += sum[0];
            hard += sum[1];
        }
        return CpuDistillationLoss.result(soft, hard, norm);
    }
}
