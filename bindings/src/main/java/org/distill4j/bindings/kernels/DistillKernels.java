package org.distill4j.bindings.kernels;

import static java.lang.foreign.ValueLayout.JAVA_INT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.ConcurrentHashMap;
import org.distill4j.bindings.cuda.CudaException;
import org.distill4j.bindings.cuda.cuda_h;

/**
 * The fused distillation loss kernels of native/src/main/cuda/distill_loss.cu: picks the regime for
 * a [rows, cols] problem ({@link #plan}) and launches it, one launch per evaluation.
 *
 * <p>Regimes (the kernel file's header explains each): a warp per row for {@code cols <= 512},
 * a block per row with the row staged in shared memory while it fits in {@link #PREFERRED_STAGE_BYTES},
 * a cluster of 2, 4 or 8 blocks per row on sm_90+ beyond that (each staging a slice of at most that
 * size), and for longer rows a block per row that re-reads global memory (from L2, mostly). Grids are about one wave;
 * blocks loop over rows, so the loss partials stay within {@link #maxBlocks()} entries.
 */
public final class DistillKernels {
    /** Largest warp-regime row: 16 values per lane (ptxas keeps them in registers without spills). */
    public static final int WARP_MAX_COLS = 512;
    /** Staged bytes per block we aim for: 96 KiB leaves room for two blocks per SM on sm_90. */
    public static final int PREFERRED_STAGE_BYTES = 96 * 1024;
    /** Threads per block: warp regime (8 warps); block/cluster regimes at most (the kernels' launch bound) and at least. */
    public static final int WARP_THREADS = 256, BLOCK_THREADS = 512, MIN_BLOCK_THREADS = 128;
    /** Resident blocks per SM we plan for at most (sm_80+ allows 32). */
    private static final int MAX_BLOCKS_PER_SM = 16;

    /** Which kernel, its grid and dynamic shared memory; {@code chunk} = columns each block stages. */
    public record Plan(String kernel, String regime, int clusterSize, int blocks, int threads, int sharedBytes, long chunk) {}

    private final KernelModule module;
    private final int multiprocessors, computeMajor, maxSharedOptin;
    private final ConcurrentHashMap<String, MemorySegment> functions = new ConcurrentHashMap<>();

    public DistillKernels(KernelModule module, int multiprocessors, int computeMajor, int maxSharedBytesPerBlockOptin) {
        this.module = module;
        this.multiprocessors = Math.max(1, multiprocessors);
        this.computeMajor = computeMajor;
        this.maxSharedOptin = maxSharedBytesPerBlockOptin;
    }

    /** Upper bound on any plan's block count: the size of the partials scratch (2 floats a block). */
    public int maxBlocks() {
        return multiprocessors * MAX_BLOCKS_PER_SM;
    }

    /** The regime and launch shape for {@code rows x cols} logits of {@code elementBytes} (4 fp32, 2 bf16). */
    public Plan plan(long rows, long cols, int elementBytes) {
        String type = elementBytes == 2 ? "bf16" : "f32";
        if (cols <= WARP_MAX_COLS) {
            int items = Integer.highestOneBit((int) Math.max(1, (cols + 31) / 32));
            if (items * 32L < cols) items <<= 1;
            long warps = WARP_THREADS / 32;
            int blocks = (int) Math.min((rows + warps - 1) / warps, maxBlocks());
            return new Plan("d4j_kd_warp" + items + "_" + type, "warp", 1, blocks, WARP_THREADS, 0, 0);
        }
        // Staged only while two blocks fit an SM: with one (128k fp32 columns in a cluster of 8),
        // nothing loads while the block computes, and the re-reading kernel (4 blocks per SM,
        // re-reads served mostly by L2) measured faster on an H100 (bench/RESULTS.md).
        int limit = Math.min(PREFERRED_STAGE_BYTES, maxSharedOptin - 1024);  // 1 KiB: the kernels' static shared memory
        for (int cl : computeMajor >= 9 ? new int[] {1, 2, 4, 8} : new int[] {1}) {
            if (stagedBytes(cols, cl, elementBytes) <= limit) return explicit(cl == 1 ? "block" : "cluster", cl, 0, rows, cols, elementBytes);
        }
        return explicit("reread", 1, 0, rows, cols, elementBytes);
    }

    private static long stagedBytes(long cols, int cl, int elementBytes) {
        return roundUp((cols + cl - 1) / cl, 8) * 2L * elementBytes;  // student + teacher slices
    }

    /**
     * A plan for a named regime ("block", "cluster", "reread"), cluster size and
     * resident blocks per SM (0: as many as fit), for benchmarks that compare regimes and tests that
     * check each against the CPU. {@link #plan} picks among these.
     */
    public Plan explicit(String regime, int clusterSize, int blocksPerSm, long rows, long cols, int elementBytes) {
        String type = elementBytes == 2 ? "bf16" : "f32";
        int cl = clusterSize;
        if (cl != 1 && cl != 2 && cl != 4 && cl != 8) throw new IllegalArgumentException("cluster size " + cl + ": 1, 2, 4 or 8");
        if (cl > 1 && computeMajor < 9) throw new IllegalArgumentException("clusters need sm_90+, this GPU is sm_" + computeMajor + "x");
        long chunk = roundUp((cols + cl - 1) / cl, 8);
        boolean staged = switch (regime) {
            case "block", "cluster" -> true;
            case "reread" -> false;
            default -> throw new IllegalArgumentException("unknown fused-loss regime '" + regime + "'");
        };
        if (regime.equals("cluster") != (cl > 1)) throw new IllegalArgumentException(regime + " with cluster size " + cl);
        long bytes = staged ? stagedBytes(cols, cl, elementBytes) : 0;
        if (bytes > maxSharedOptin - 1024) throw new IllegalArgumentException(regime + ": " + bytes + " bytes of shared memory a block exceed the device's");
        // Staged: about 8 columns a thread, so short rows get small blocks and more of them per SM.
        int threads = staged ? (int) Math.min(BLOCK_THREADS, Math.max(MIN_BLOCK_THREADS, Long.highestOneBit(Math.max(1, chunk / 8)))) : BLOCK_THREADS;
        int fit = (int) Math.max(1, Math.min(Math.min(2048 / threads, MAX_BLOCKS_PER_SM), (maxSharedOptin + 1024L) / (bytes + 1024)));
        int perSm = blocksPerSm > 0 ? Math.min(blocksPerSm, fit) : fit;
        long groups = Math.max(1, Math.min(rows, (long) multiprocessors * perSm / cl));
        String name = switch (regime) {
            case "block" -> "d4j_kd_block_" + type;
            case "cluster" -> "d4j_kd_cluster" + cl + "_" + type;
            default -> "d4j_kd_reread_" + type;
        };
        return new Plan(name, regime, cl, (int) (groups * cl), threads, (int) bytes, staged ? chunk : cols);
    }

    /**
     * One evaluation: loss[0..nout) and (if grad is not NULL) dL/ds into grad, which may be s.
     * counters: 3 u64, zero on entry (the kernel leaves them zero); counters[0] = counted rows when
     * normalizer is 0 (from d4j_ce_count). partials: {@link #maxBlocks()} * 2 floats of scratch.
     */
    public void launch(Plan plan, MemorySegment s, MemorySegment t, MemorySegment labels, long rows, long cols, int divergence, float temperature,
                       float alpha, float beta, long ignore, MemorySegment counters, float normalizer, MemorySegment partials, MemorySegment loss,
                       int nout, MemorySegment grad, MemorySegment stream) {
        if (rows <= 0) throw new IllegalArgumentException(plan.kernel() + ": needs at least one row, got " + rows);
        MemorySegment fn = function(plan);
        try (Arena a = Arena.ofConfined()) {
            LaunchArgs la = new LaunchArgs(a, 17).pointer(s).pointer(t);
            la = labels.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(labels);
            la = la.i64(rows).i64(cols).i32(divergence).f32(temperature).f32(alpha).f32(beta).i64(ignore).pointer(counters).f32(normalizer)
                .pointer(partials).pointer(loss).i32(nout);
            la = grad.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(grad);
            la = la.i64(plan.chunk());
            CudaException.check(cuda_h.cuLaunchKernel(fn, plan.blocks(), 1, 1, plan.threads(), 1, 1, plan.sharedBytes(), stream, la.segment(),
                MemorySegment.NULL), "cuLaunchKernel(" + plan.kernel() + ", " + plan.blocks() + " blocks, " + plan.sharedBytes() + " B shared)");
        }
    }

    /** The kernel's CUfunction; the first time, it is allowed all the dynamic shared memory the device offers. */
    private MemorySegment function(Plan plan) {
        return functions.computeIfAbsent(plan.kernel(), name -> {
            MemorySegment fn = module.function(name);
            if (plan.regime().equals("block") || plan.regime().equals("cluster")) {
                try (Arena a = Arena.ofConfined()) {
                    MemorySegment v = a.allocate(JAVA_INT);
                    CudaException.check(cuda_h.cuFuncGetAttribute(v, cuda_h.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, fn), "cuFuncGetAttribute(" + name + ")");
                    int dynamic = maxSharedOptin - v.get(JAVA_INT, 0);
                    CudaException.check(cuda_h.cuFuncSetAttribute(fn, cuda_h.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic),
                        "cuFuncSetAttribute(" + name + ", max dynamic shared " + dynamic + " B)");
                }
            }
            return fn;
        });
    }

    private static long roundUp(long v, long m) {
        return (v + m - 1) / m * m;
    }
}
