package org.distill4j.bindings.kernels;

import static java.lang.foreign.ValueLayout.JAVA_INT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import org.distill4j.bindings.cuda.CudaException;
import org.distill4j.bindings.cuda.cuda_h;

/**
 * The fused distillation loss kernels of native/src/main/cuda/distill_loss.cu: picks the regime for
 * a [rows, cols] problem ({@link #plan}) and launches it, one launch per evaluation.
 *
 * <p>Regimes (the kernel file's header explains each): a warp per row for {@code cols <= 512}
 * (explicit plans up to 1,024: 32 values a lane, a candidate for 1k not yet measured),
 * a block per row with the row staged in shared memory while it fits in {@link #MAX_STAGE_BYTES},
 * on sm_90+ a cluster of two blocks per row while each can stage 3/4 of its half (the rest
 * re-read from L2), and beyond that (or before sm_90) a block per row that re-reads global memory.
 * Clusters of 4, 8 and 16 blocks, and partial staging at any size, are there for
 * {@link #explicit} plans: measured, not faster ({@code GpuLossBench --sweep}). So is "pipe", the
 * block or cluster regime double-buffered with cp.async (the next row copied while this one is
 * computed), written without a GPU in the fifth session and not yet measured, and "split" (the
 * seventh session, no GPU either, not yet measured): a row cut into slices held by a fixed group of
 * blocks that meet through L2, each row read once at any length and without clusters, the copy of
 * one row overlapping the gradient pass of the previous one (its reverse KL / JSD twin, the eighth
 * session's, meets once more a row for the gradient's row sum, in the same shared memory and grid).
 * A plan names the KL/MSE kernel; reverse KL and JSD run its {@code _pg} twin (their gradient's
 * row sum formed in double), chosen by {@link #launch} from the divergence. Grids are about one wave; blocks loop
 * over rows, so the loss partials stay within {@link #maxBlocks()} entries. The thresholds are
 * measured on an H100 ({@code GpuLossBench --sweep}, bench/RESULTS.md).
 */
public final class DistillKernels {
    /** Largest warp-regime row the planner picks: 16 values per lane (ptxas keeps them in registers without spills). */
    public static final int WARP_MAX_COLS = 512;
    /** Largest warp-regime row of an explicit plan: 32 values per lane (160 registers on sm_90), to be measured at 1k. */
    public static final int WARP_EXPLICIT_MAX_COLS = 1024;
    /** Most staged bytes a block the planner uses: two blocks still fit an SM. */
    public static final int MAX_STAGE_BYTES = 96 * 1024;
    /** Threads per block: warp regime (8 warps); block/cluster regimes at most (the kernels' launch bound) and at least. */
    public static final int WARP_THREADS = 256, BLOCK_THREADS = 512, MIN_BLOCK_THREADS = 128;
    /** Registers an SM (sm_80 to sm_120). */
    private static final int REGISTERS_PER_SM = 65536;
    /** Registers a thread assumed when planning without a loaded module (the block kernels use 40-58 on sm_80-sm_90). */
    static final int ASSUMED_REGISTERS = 64;
    /** Resident blocks per SM we plan for at most (sm_80+ allows 32). */
    private static final int MAX_BLOCKS_PER_SM = 16;
    /**
     * Upper bound on the kernels' static shared memory (reductions, cluster slots: 1,088 B on
     * sm_90), kept free of staging; checked against the loaded kernel.
     */
    public static final int STATIC_SHARED_BYTES = 2048;
    /** Largest cluster (explicit plans): 16 is beyond the portable 8 (the kernel opts in; an H100 runs it). */
    public static final int MAX_CLUSTER = 16;

    /** The regimes {@link #explicit} plans, in the order benchmarks and tests list them. */
    public static final List<String> REGIMES = List.of("warp", "block", "cluster", "reread", "pipe", "split");

    /** Columns of a split plan's slice by default: 16 KiB of student + teacher a buffer (2,048 fp32 columns). */
    static final int SPLIT_BUFFER_BYTES = 16 * 1024;
    /**
     * Most threads a split block: its reverse KL / JSD kernel is compiled for 256 (on sm_100+ ptxas
     * needs more than the 128 registers a 512-thread bound leaves), and one plan serves every divergence.
     */
    public static final int SPLIT_THREADS = 256;

    /**
     * Floats of the partials scratch per block of {@link #maxBlocks()}: 2 for the block's loss
     * partial (soft, hard) and 30 for the split regime's ring, which starts after all of those:
     * 2 x 2 words of flags (arrivals and ready for 2 ring rows, at fixed places), then for
     * R = 2 G / K ring rows (G blocks, K slices a row, K >= 2) R K x 5 slice statistics, R x 5
     * row statistics, and for the {@code _pg} kernel R K x 2 doubles of pg slots and R doubles of
     * row pg: R (9 K + 7) <= 25 G floats. 32 in all keeps the doubles 8-byte aligned.
     * It must be zero before the first launch (every launch leaves the flags zero).
     */
    public static final int SCRATCH_FLOATS_PER_BLOCK = 2 + 30;

    /** The cluster sizes a regime's explicit plans take (1: no cluster; pipe: the block and every cluster). */
    public static int[] clusterSizes(String regime) {
        return switch (regime) {
            case "cluster" -> new int[] {2, 4, 8, 16};
            case "pipe" -> new int[] {1, 2, 4, 8, 16};
            case "warp", "block", "reread", "split" -> new int[] {1};
            default -> throw new IllegalArgumentException("unknown fused-loss regime '" + regime + "', expected one of " + REGIMES);
        };
    }

    /**
     * Which kernel, its grid and dynamic shared memory; {@code chunk} = columns of the row each block
     * owns, {@code staged} = how many of them it holds in shared memory (0: re-read regime).
     */
    public record Plan(String kernel, String regime, int clusterSize, int blocks, int threads, int sharedBytes, long chunk, long staged) {}

    private final KernelModule module;
    private final int multiprocessors, computeMajor, maxSharedOptin;
    private final ConcurrentHashMap<String, MemorySegment> functions = new ConcurrentHashMap<>();
    private final ConcurrentHashMap<String, Integer> registers = new ConcurrentHashMap<>();
    /** A kernel (the plan's or its _pg twin) launched in a plan's shape: the key of the residency cache. */
    private record Launch(String kernel, Plan plan) {}
    private final ConcurrentHashMap<Launch, Integer> coResident = new ConcurrentHashMap<>();

    public DistillKernels(KernelModule module, int multiprocessors, int computeMajor, int maxSharedBytesPerBlockOptin) {
        this.module = module;
        this.multiprocessors = Math.max(1, multiprocessors);
        this.computeMajor = computeMajor;
        this.maxSharedOptin = maxSharedBytesPerBlockOptin;
    }

    /** Upper bound on any plan's block count. */
    public int maxBlocks() {
        return multiprocessors * MAX_BLOCKS_PER_SM;
    }

    /** Floats of the partials scratch a {@link #launch} needs (zeroed once, before the first launch; the kernels leave it so). */
    public long scratchFloats() {
        return (long) maxBlocks() * SCRATCH_FLOATS_PER_BLOCK;
    }

    /** The regime and launch shape for {@code rows x cols} logits of {@code elementBytes} (4 fp32, 2 bf16). */
    public Plan plan(long rows, long cols, int elementBytes) {
        if (cols <= WARP_MAX_COLS) return explicit("warp", 1, 0, rows, cols, elementBytes);
        int limit = Math.min(MAX_STAGE_BYTES, maxSharedOptin - STATIC_SHARED_BYTES);
        if (sliceBytes(cols, 1, elementBytes) <= limit) return explicit("block", 1, 0, rows, cols, elementBytes, limit);
        // sm_90+: a pair of blocks per row while each stages at least 3/4 of its half (up to 32k fp32
        // columns), the rest of the half re-read from L2; longer rows re-read. Measured on an H100
        // at 32k: 1,862 GB/s for the pair (96 KiB staged of 128 KiB) against 1,570 for 8 blocks of
        // 32 KiB, 1,465 for 4 of 64 KiB and 1,372 re-reading; at 128k and 256k no cluster beat the
        // re-reading block (1,404 GB/s) by more than 0.2% (bench/RESULTS.md).
        if (computeMajor >= 9 && 4 * (long) limit >= 3 * sliceBytes(cols, 2, elementBytes)) {
            return explicit("cluster", 2, 0, rows, cols, elementBytes, limit);
        }
        return explicit("reread", 1, 0, rows, cols, elementBytes);
    }

    /** Bytes of a block's slice of both rows (student + teacher) in a cluster of {@code cl}. */
    private static long sliceBytes(long cols, int cl, int elementBytes) {
        return roundUp((cols + cl - 1) / cl, 8) * 2L * elementBytes;
    }

    /** {@link #explicit(String, int, int, long, long, int, long)} staging as much of each slice as the device allows. */
    public Plan explicit(String regime, int clusterSize, int blocksPerSm, long rows, long cols, int elementBytes) {
        return explicit(regime, clusterSize, blocksPerSm, rows, cols, elementBytes, maxSharedOptin - STATIC_SHARED_BYTES);
    }

    /**
     * A plan for a named regime ("warp": a warp per row up to {@link #WARP_EXPLICIT_MAX_COLS};
     * "block", "cluster", "reread", "split", or "pipe": the block (cluster size 1)
     * or cluster regime double-buffered, copying the next row while computing on this one, with
     * twice the shared memory), cluster size, resident blocks per SM (0: as many as fit) and most
     * staged bytes a block (student + teacher, both buffers; the rest of a cluster's slice is
     * re-read), for benchmarks that compare regimes and tests that check each against the CPU.
     * {@link #plan} picks among block, cluster and reread ("pipe" awaits its GPU measurement).
     */
    public Plan explicit(String regime, int clusterSize, int blocksPerSm, long rows, long cols, int elementBytes, long maxStageBytes) {
        return explicit(regime, clusterSize, blocksPerSm, rows, cols, elementBytes, maxStageBytes, 0);
    }

    /** {@link #explicit(String, int, int, long, long, int, long)} with {@code threadsPerBlock} threads a block (0: the planner's choice; else a multiple of 32 up to 512). */
    public Plan explicit(String regime, int clusterSize, int blocksPerSm, long rows, long cols, int elementBytes, long maxStageBytes, int threadsPerBlock) {
        if (threadsPerBlock != 0 && (threadsPerBlock % 32 != 0 || threadsPerBlock < 32 || threadsPerBlock > BLOCK_THREADS)) {
            throw new IllegalArgumentException("threads a block: a multiple of 32 from 32 to " + BLOCK_THREADS + ", got " + threadsPerBlock);
        }
        String type = elementBytes == 2 ? "bf16" : "f32";
        if (regime.equals("warp")) return warp(clusterSize, blocksPerSm, rows, cols, threadsPerBlock, type);
        if (regime.equals("split")) return split(clusterSize, blocksPerSm, rows, cols, elementBytes, maxStageBytes, threadsPerBlock, type);
        int cl = clusterSize;
        if (Integer.bitCount(cl) != 1 || cl > MAX_CLUSTER) throw new IllegalArgumentException("cluster size " + cl + ": 1, 2, 4, 8 or 16");
        if (cl > 1 && computeMajor < 9) throw new IllegalArgumentException("clusters need sm_90+, this GPU is sm_" + computeMajor + "x");
        long chunk = roundUp((cols + cl - 1) / cl, 8);
        if (java.util.Arrays.stream(clusterSizes(regime)).noneMatch(size -> size == cl)) {
            throw new IllegalArgumentException(regime + " with cluster size " + cl + ": expected one of " + java.util.Arrays.toString(clusterSizes(regime)));
        }
        boolean staged = !regime.equals("reread");
        boolean pipe = regime.equals("pipe");
        int buffers = pipe ? 2 : 1;
        long held = 0;
        if (staged) {
            long fit = Math.min(maxStageBytes, maxSharedOptin - STATIC_SHARED_BYTES) / (2L * elementBytes * buffers) / 8 * 8;  // columns, a multiple of 8
            if (fit < 8) throw new IllegalArgumentException(regime + ": " + maxStageBytes + " bytes stage nothing");
            held = Math.min(chunk, fit);
            // A block stages all of its slice, or (clusters only: the longest rows) re-reads the
            // rest; pipelined clusters only with 16 blocks (the one partly staged pipe kernel).
            if (held < chunk && (cl == 1 || (pipe && cl != MAX_CLUSTER))) {
                throw new IllegalArgumentException(regime + ": " + buffers * sliceBytes(cols, cl, elementBytes) + " bytes of shared memory a block exceed "
                    + Math.min(maxStageBytes, maxSharedOptin - STATIC_SHARED_BYTES));
            }
        }
        long bytes = held * 2L * elementBytes * buffers;
        int threads = threadsPerBlock != 0 ? threadsPerBlock : staged ? stagedThreads(chunk) : BLOCK_THREADS;
        String name = switch (regime) {
            case "block" -> "d4j_kd_block_" + type;
            case "pipe" -> "d4j_kd_pipe" + (cl == 1 ? "" : cl) + (held < chunk ? "p" : "") + "_" + type;
            case "cluster" -> "d4j_kd_cluster" + cl + "_" + type;
            default -> "d4j_kd_reread_" + type;
        };
        long groups = Math.max(1, Math.min(rows, (long) multiprocessors * residentPerSm(name, threads, bytes, blocksPerSm) / cl));
        return new Plan(name, regime, cl, (int) (groups * cl), threads, (int) bytes, staged ? chunk : cols, held);
    }

    /**
     * The warp regime's plan: a warp per row, the row in registers, {@code items} = 32 * values a lane
     * (the next power of two that holds the row); {@link #WARP_THREADS} threads a block unless given
     * (at most that: the kernels' launch bound), and a grid of one block per {@code threads / 32} rows
     * up to {@link #maxBlocks()}, or {@code blocksPerSm} an SM when that is positive.
     */
    private Plan warp(int clusterSize, int blocksPerSm, long rows, long cols, int threadsPerBlock, String type) {
        if (clusterSize != 1) throw new IllegalArgumentException("warp with cluster size " + clusterSize + ": expected [1]");
        if (cols > WARP_EXPLICIT_MAX_COLS) throw new IllegalArgumentException("warp: " + cols + " columns exceed " + WARP_EXPLICIT_MAX_COLS + " (32 values a lane)");
        if (threadsPerBlock > WARP_THREADS) throw new IllegalArgumentException("warp: at most " + WARP_THREADS + " threads a block, got " + threadsPerBlock);
        int items = Integer.highestOneBit((int) Math.max(1, (cols + 31) / 32));
        if (items * 32L < cols) items <<= 1;
        int threads = threadsPerBlock != 0 ? threadsPerBlock : WARP_THREADS;
        long warps = threads / 32;
        long cap = blocksPerSm > 0 ? (long) multiprocessors * blocksPerSm : maxBlocks();
        int blocks = (int) Math.max(1, Math.min((rows + warps - 1) / warps, cap));
        return new Plan("d4j_kd_warp" + items + "_" + type, "warp", 1, blocks, threads, 0, 0, 0);
    }

    /**
     * The split regime's plan: slices of {@code chunk} columns (16 KiB of student + teacher a buffer
     * by default, or the largest that fits {@code maxStageBytes} for both buffers when that is below
     * what the device offers), K = ceil(cols / chunk) slices a row evened out to multiples of 8, and
     * a grid of whole groups of K blocks, all resident at once (the launch is cooperative).
     */
    private Plan split(int clusterSize, int blocksPerSm, long rows, long cols, int elementBytes, long maxStageBytes, int threadsPerBlock, String type) {
        if (clusterSize != 1) throw new IllegalArgumentException("split with cluster size " + clusterSize + ": expected [1]");
        long deviceBytes = maxSharedOptin - STATIC_SHARED_BYTES;
        long bufferBytes = maxStageBytes >= deviceBytes ? SPLIT_BUFFER_BYTES : maxStageBytes / 2;
        long target = Math.min(bufferBytes, deviceBytes / 2) / (2L * elementBytes) / 8 * 8;  // columns a slice, a multiple of 8
        if (target < 8) throw new IllegalArgumentException("split: " + maxStageBytes + " bytes stage nothing");
        long slices = (cols + target - 1) / target;
        long chunk = roundUp((cols + slices - 1) / slices, 8);
        slices = (cols + chunk - 1) / chunk;  // rounding chunk up may leave fewer slices, none empty
        int bytes = (int) (2 * chunk * 2L * elementBytes);
        if (threadsPerBlock > SPLIT_THREADS) throw new IllegalArgumentException("split: at most " + SPLIT_THREADS + " threads a block, got " + threadsPerBlock);
        int threads = threadsPerBlock != 0 ? threadsPerBlock : Math.min(SPLIT_THREADS, stagedThreads(chunk));
        String name = "d4j_kd_split_" + type;
        long resident = (long) multiprocessors * residentPerSm(name, threads, bytes, blocksPerSm);
        if (resident < slices) {
            throw new IllegalArgumentException("split: a row of " + slices + " slices needs " + slices + " resident blocks, this plan has " + resident);
        }
        long groups = Math.max(1, Math.min(rows, resident / slices));
        return new Plan(name, "split", 1, (int) (groups * slices), threads, bytes, chunk, chunk);
    }

    /** Threads a block that stages {@code chunk} columns: about 8 columns a thread, so short rows get small blocks and more of them per SM. */
    private static int stagedThreads(long chunk) {
        return (int) Math.min(BLOCK_THREADS, Math.max(MIN_BLOCK_THREADS, Long.highestOneBit(Math.max(1, chunk / 8))));
    }

    /**
     * Resident blocks an SM, by threads, by shared memory (an SM's is the opt-in maximum + 1 KiB;
     * a block takes its dynamic and static bytes plus 1 KiB the system reserves) and by
     * registers, capped at {@code blocksPerSm} when that is positive: a grid beyond them runs a
     * second, partial wave (8k columns: 1,900 GB/s planned at 3 blocks an SM that fit 2, 2,173 at 2).
     */
    private int residentPerSm(String kernel, int threads, long sharedBytes, int blocksPerSm) {
        long bySharedMemory = (maxSharedOptin + 1024L) / (sharedBytes + STATIC_SHARED_BYTES + 1024);
        int fit = (int) Math.max(1, Math.min(Math.min(2048 / threads, MAX_BLOCKS_PER_SM), Math.min(bySharedMemory, blocksPerSmByRegisters(kernel, threads))));
        return blocksPerSm > 0 ? Math.min(blocksPerSm, fit) : fit;
    }

    /**
     * One evaluation, one launch: loss[0..nout) and (if grad is not NULL) dL/ds into grad, which may
     * be s. counters: 3 u64, zero on entry (the kernel leaves them zero). partials:
     * {@link #scratchFloats()} floats of scratch, zero before the first launch. normalizer: the caller's N, or 0 to divide by the
     * rows whose label is in [0, cols) (counted by the kernel: every block waits at a grid barrier
     * for the count, so the grid is cut to what is resident at once and launched so that the driver
     * refuses, rather than hangs on, a grid that is not) or, without labels, by {@code rows}.
     */
    public void launch(Plan plan, MemorySegment s, MemorySegment t, MemorySegment labels, long rows, long cols, int divergence, float temperature,
                       float alpha, float beta, long ignore, MemorySegment counters, float normalizer, MemorySegment partials, MemorySegment loss,
                       int nout, MemorySegment grad, MemorySegment stream) {
        if (rows <= 0) throw new IllegalArgumentException(plan.kernel() + ": needs at least one row, got " + rows);
        // Reverse KL and JSD (divergences 1 and 2) run the _pg twin of the planned kernel, which
        // forms their gradient's row sum in double and uses more registers: its grid is cut to what
        // is resident at once (blocks loop over rows, so any grid covers them).
        // The counted normalizer's grid barrier needs the same cut, and a cooperative launch (below).
        boolean pg = divergence == 1 || divergence == 2;
        boolean split = plan.regime().equals("split");
        boolean counted = normalizer <= 0f && !labels.equals(MemorySegment.NULL);
        // split: a group's blocks wait for each other's row statistics, so all must be resident
        boolean cooperative = (counted && plan.clusterSize() == 1) || split;
        String kernel = pg ? plan.kernel() + "_pg" : plan.kernel();
        MemorySegment fn = function(kernel, plan);
        int blocks = pg || counted || split ? Math.min(plan.blocks(), coResident(kernel, fn, plan, stream)) : plan.blocks();
        if (split) {
            long slices = (cols + plan.chunk() - 1) / plan.chunk();
            blocks = (int) (blocks / slices * slices);  // whole groups
            if (blocks == 0) {
                throw new IllegalStateException(kernel + ": a row of " + slices + " slices needs " + slices + " resident blocks, the device holds "
                    + coResident(kernel, fn, plan, stream));
            }
        }
        try (Arena a = Arena.ofConfined()) {
            LaunchArgs la = new LaunchArgs(a, 18).pointer(s).pointer(t);
            la = labels.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(labels);
            la = la.i64(rows).i64(cols).i32(divergence).f32(temperature).f32(alpha).f32(beta).i64(ignore).pointer(counters).f32(Math.max(0f, normalizer))
                .pointer(partials).pointer(loss).i32(nout);
            la = grad.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(grad);
            // split: the last argument is where its ring starts in the partials scratch, past the
            // loss partials of any grid (another regime's launch overwrites those); the kernel
            // takes half of it as the largest grid, which sizes the ring's flag arrays
            la = la.i64(plan.chunk()).i64(split ? 2L * maxBlocks() : plan.staged());
            // cooperative: the driver checks that every block is resident at once (the grid
            // barrier's premise) and fails with COOPERATIVE_LAUNCH_TOO_LARGE otherwise; counted
            // cluster kernels rely on the grid cut to cuOccupancyMaxActiveClusters (coResident)
            int status = cooperative
                ? cuda_h.cuLaunchCooperativeKernel(fn, blocks, 1, 1, plan.threads(), 1, 1, plan.sharedBytes(), stream, la.segment())
                : cuda_h.cuLaunchKernel(fn, blocks, 1, 1, plan.threads(), 1, 1, plan.sharedBytes(), stream, la.segment(), MemorySegment.NULL);
            CudaException.check(status, (cooperative ? "cuLaunchCooperativeKernel(" : "cuLaunchKernel(") + kernel + ", " + blocks + " blocks, "
                + plan.sharedBytes() + " B shared)");
        }
    }

    /**
     * Blocks of the plan's shape that the driver says {@code kernel} can keep resident at once,
     * whole clusters: the grid of a launch whose blocks wait for each other (the label count's grid
     * barrier), and of a _pg twin, whose registers may fit fewer blocks than the plan's kernel.
     * Asked of cuOccupancyMaxActiveBlocksPerMultiprocessor, or for cluster kernels of
     * cuOccupancyMaxActiveClusters (clusters are placed within a GPC, so SMs x blocks an SM can
     * overstate them); cached per kernel and plan.
     */
    private int coResident(String kernel, MemorySegment fn, Plan plan, MemorySegment stream) {
        return coResident.computeIfAbsent(new Launch(kernel, plan), k -> {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment n = a.allocate(JAVA_INT);
                long blocks;
                if (plan.clusterSize() == 1) {
                    CudaException.check(cuda_h.cuOccupancyMaxActiveBlocksPerMultiprocessor(n, fn, plan.threads(), plan.sharedBytes()),
                        "cuOccupancyMaxActiveBlocksPerMultiprocessor(" + kernel + ")");
                    blocks = (long) n.get(JAVA_INT, 0) * multiprocessors;
                } else {
                    MemorySegment config = a.allocate(cuda_h.CUlaunchConfig.LAYOUT);  // zeroed: no attributes (the kernel's cluster size is compiled in)
                    cuda_h.CUlaunchConfig.gridDimX(config, plan.blocks());
                    cuda_h.CUlaunchConfig.gridDimY(config, 1);
                    cuda_h.CUlaunchConfig.gridDimZ(config, 1);
                    cuda_h.CUlaunchConfig.blockDimX(config, plan.threads());
                    cuda_h.CUlaunchConfig.blockDimY(config, 1);
                    cuda_h.CUlaunchConfig.blockDimZ(config, 1);
                    cuda_h.CUlaunchConfig.sharedMemBytes(config, plan.sharedBytes());
                    cuda_h.CUlaunchConfig.hStream(config, stream);
                    CudaException.check(cuda_h.cuOccupancyMaxActiveClusters(n, fn, config), "cuOccupancyMaxActiveClusters(" + kernel + ")");
                    blocks = (long) n.get(JAVA_INT, 0) * plan.clusterSize();
                }
                if (blocks < plan.clusterSize()) {
                    throw new IllegalStateException(kernel + ": not one block of " + plan.threads() + " threads and " + plan.sharedBytes()
                        + " B of shared memory can be resident on this device (occupancy query)");
                }
                return (int) Math.min(Integer.MAX_VALUE, blocks);
            }
        });
    }

    /** Blocks of {@code threads} an SM's registers hold for this kernel (64K an SM, allocated per thread in multiples of 8). */
    private long blocksPerSmByRegisters(String kernel, int threads) {
        return REGISTERS_PER_SM / (roundUp(registersPerThread(kernel), 8) * threads);
    }

    /** The kernel's CUfunction; the first time, it is allowed all the dynamic shared memory the device offers. */
    private MemorySegment function(String kernel, Plan plan) {
        return functions.computeIfAbsent(kernel, name -> {
            MemorySegment fn = module.function(name);
            if (plan.staged() > 0) {
                int statics = attribute(fn, cuda_h.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, name, "static shared bytes");
                if (statics > STATIC_SHARED_BYTES) {
                    throw new IllegalStateException(name + " uses " + statics + " B of static shared memory, more than the " + STATIC_SHARED_BYTES
                        + " B the planner keeps free (DistillKernels.STATIC_SHARED_BYTES)");
                }
                int dynamic = maxSharedOptin - statics;
                CudaException.check(cuda_h.cuFuncSetAttribute(fn, cuda_h.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic),
                    "cuFuncSetAttribute(" + name + ", max dynamic shared " + dynamic + " B)");
                // 16 blocks is beyond the portable cluster size (8): the kernel must opt in.
                if (plan.clusterSize() > 8) {
                    CudaException.check(cuda_h.cuFuncSetAttribute(fn, cuda_h.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
                        "cuFuncSetAttribute(" + name + ", non-portable cluster size allowed)");
                }
            }
            return fn;
        });
    }

    /**
     * Registers a thread of the kernel uses (ptxas's choice, read from the loaded module), or
     * {@link #ASSUMED_REGISTERS} without a module (planning tests without a GPU).
     */
    private int registersPerThread(String kernel) {
        if (module == null) return ASSUMED_REGISTERS;
        return registers.computeIfAbsent(kernel, name -> attribute(module.function(name), cuda_h.CU_FUNC_ATTRIBUTE_NUM_REGS, name, "registers"));
    }

    /** One CUfunction attribute (cuFuncGetAttribute). */
    private static int attribute(MemorySegment fn, int attribute, String kernel, String what) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(JAVA_INT);
            CudaException.check(cuda_h.cuFuncGetAttribute(v, attribute, fn), "cuFuncGetAttribute(" + kernel + ", " + what + ")");
            return v.get(JAVA_INT, 0);
        }
    }

    private static long roundUp(long v, long m) {
        return (v + m - 1) / m * m;
    }
}
