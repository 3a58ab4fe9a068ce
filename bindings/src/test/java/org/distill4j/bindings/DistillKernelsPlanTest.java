package org.distill4j.bindings;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.distill4j.bindings.kernels.DistillKernels;
import org.distill4j.bindings.kernels.DistillKernels.Plan;
import org.junit.jupiter.api.Test;

/**
 * The fused loss's regime planner, without a GPU (planning reads only the device's numbers): an
 * H100 (132 SMs, sm_90, 227 KiB of opt-in shared memory per block) and an A100-like sm_80.
 */
class DistillKernelsPlanTest {
    private static final int OPTIN_H100 = 232448;
    private final DistillKernels h100 = new DistillKernels(null, 132, 9, OPTIN_H100);
    private final DistillKernels sm80 = new DistillKernels(null, 108, 8, 166912);

    @Test
    void regimesByRowLength() {
        assertEquals(new Plan("d4j_kd_warp1_f32", "warp", 1, 2112, 256, 0, 0, 0), h100.plan(20000, 1, 4));
        assertEquals("d4j_kd_warp16_bf16", h100.plan(100, 512, 2).kernel());
        Plan p = h100.plan(16384, 513, 4);
        assertEquals("block", p.regime());
        assertEquals(520, p.chunk(), "chunks are whole 16-byte vectors of bf16 (8 elements)");
        assertEquals(p.chunk(), p.staged(), "a block stages its whole row");
        assertEquals(128, p.threads(), "about 8 columns a thread, at least 128 threads");
        assertEquals("block", h100.plan(16384, 12288, 4).regime(), "96 KiB: the largest staged fp32 row of one block");
        Plan c = h100.plan(16384, 12289, 4);
        assertEquals("d4j_kd_cluster2_f32", c.kernel(), "beyond one block: a pair");
        assertEquals(6152, c.chunk());
        assertEquals(c.chunk(), c.staged(), "each half fits whole");
        assertEquals(c.chunk() * 8, c.sharedBytes(), "student + teacher slices");
        Plan partial = h100.plan(16384, 32000, 4);
        assertEquals("d4j_kd_cluster2_f32", partial.kernel());
        assertEquals(16000, partial.chunk());
        assertEquals(12288, partial.staged(), "96 KiB staged, the rest of the half re-read");
        assertEquals(DistillKernels.MAX_STAGE_BYTES, partial.sharedBytes());
        assertEquals(264, partial.blocks(), "two blocks an SM");
        assertEquals("cluster", h100.plan(16384, 32768, 4).regime(), "3/4 of each half staged: still a pair");
        assertEquals("reread", h100.plan(16384, 32769, 4).regime(), "less than 3/4: re-read");
        assertEquals("reread", h100.plan(16384, 262144, 4).regime());
        assertEquals("cluster", h100.plan(16384, 65536, 2).regime(), "bf16 halves the bytes");
        assertEquals("reread", h100.plan(16384, 65537, 2).regime());
        assertEquals("reread", sm80.plan(16384, 12289, 4).regime(), "no clusters before sm_90");
        assertEquals(0, sm80.plan(16384, 12289, 4).staged());
    }

    @Test
    void gridsStayWithinThePartialsScratch() {
        for (DistillKernels k : new DistillKernels[] {h100, sm80}) {
            for (long rows : new long[] {1, 7, 1000, 16384, 1 << 20}) {
                for (long cols : new long[] {1, 33, 512, 513, 1000, 8000, 32000, 131072, 262144}) {
                    for (int bytes : new int[] {2, 4}) {
                        Plan p = k.plan(rows, cols, bytes);
                        assertTrue(p.blocks() >= 1 && p.blocks() <= k.maxBlocks(), p + " vs " + k.maxBlocks());
                        assertEquals(0, p.blocks() % p.clusterSize(), p + ": whole clusters");
                        assertTrue(p.sharedBytes() <= OPTIN_H100 - DistillKernels.STATIC_SHARED_BYTES, p.toString());
                        if (!p.regime().equals("warp")) assertTrue(p.blocks() / p.clusterSize() <= rows, p + ": no idle groups");
                    }
                }
            }
        }
    }

    @Test
    void explicitPlansRejectWhatCannotRun() {
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("cluster", 3, 0, 10, 32000, 4));
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("cluster", 1, 0, 10, 32000, 4));
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("block", 2, 0, 10, 32000, 4));
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("block", 1, 0, 10, 262144, 4), "256k fp32 does not fit one block");
        assertThrows(IllegalArgumentException.class, () -> sm80.explicit("cluster", 2, 0, 10, 32000, 4));
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("splat", 1, 0, 10, 32000, 4), "an unknown regime");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("split", 2, 0, 10, 32000, 4), "split groups are not clusters");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("split", 1, 0, 10, 262144, 4, 2048), "1 KiB buffers: 2,048 slices a row, 528 resident blocks");
        assertEquals(132, h100.explicit("reread", 1, 1, 16384, 262144, 4).blocks(), "one block per SM when asked");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("block", 1, 0, 10, 8000, 4, 32 * 1024), "a block stages its whole row");
        assertEquals(4096, h100.explicit("cluster", 2, 0, 10, 32000, 4, 32 * 1024).staged(), "a cluster's block may stage part of its slice");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("cluster", 2, 0, 10, 32000, 4, 16));
    }

    /**
     * Every kernel a plan can name, and its reverse KL / JSD twin, is in the built fatbin (the names
     * ptxas compiled): a kernel renamed or missing on one side fails here, not on a GPU.
     */
    @Test
    void everyPlannedKernelIsBuilt() {
        org.junit.jupiter.api.Assumptions.assumeTrue(org.distill4j.kernels.KernelImage.built(),
            "this build has no nvcc: " + org.distill4j.kernels.KernelImage.notBuiltReason());
        java.util.Set<String> names = new java.util.TreeSet<>();
        for (int bytes : new int[] {2, 4}) {
            for (long cols = 1; cols <= DistillKernels.WARP_MAX_COLS; cols = cols * 2 + 1) names.add(h100.plan(1000, cols, bytes).kernel());
            for (long cols : new long[] {1000, 8000, 32000, 131072, 262144}) {
                names.add(h100.plan(16384, cols, bytes).kernel());
                for (String regime : DistillKernels.REGIMES) {
                    for (int cl : DistillKernels.clusterSizes(regime)) {
                        for (long stage : new long[] {Long.MAX_VALUE, 64 * 1024}) {
                            try {
                                names.add(h100.explicit(regime, cl, 0, 16384, cols, bytes, stage).kernel());
                            } catch (IllegalArgumentException notThisShape) {
                                // the regime cannot run this shape
                            }
                        }
                    }
                }
            }
        }
        java.util.List<String> built = org.distill4j.kernels.KernelImage.kernelNames();
        for (String name : names) {
            assertTrue(built.contains(name), name + " is planned but not built");
            assertTrue(built.contains(name + "_pg"), name + "_pg (reverse KL / JSD) is not built");
        }
        for (String family : new String[] {"warp", "block", "cluster", "reread", "pipe", "split"}) {
            assertTrue(names.stream().anyMatch(n -> n.startsWith("d4j_kd_" + family)), family + " kernels planned");
        }
        assertTrue(names.contains("d4j_kd_pipe16p_f32"), "the partly staged pipe: " + names);
    }

    @Test
    void pipelinedPlansDoubleTheirSharedMemory() {
        Plan block = h100.explicit("block", 1, 0, 16384, 1000, 4), pipe = h100.explicit("pipe", 1, 0, 16384, 1000, 4);
        assertEquals("d4j_kd_pipe_f32", pipe.kernel());
        assertEquals(2 * block.sharedBytes(), pipe.sharedBytes(), "two buffers of [student | teacher] slices");
        assertEquals(block.chunk(), pipe.staged(), "whole slices");
        Plan p16 = h100.explicit("pipe", 16, 0, 16384, 131072, 4);
        assertEquals("d4j_kd_pipe16_f32", p16.kernel());
        assertEquals(8192 * 2 * 4 * 2, p16.sharedBytes(), "8k columns a block, student + teacher, two buffers: 128 KiB");
        assertEquals(0, p16.blocks() % 16);
        assertEquals("d4j_kd_pipe16_bf16", h100.explicit("pipe", 16, 0, 16384, 262144, 2).kernel(), "256k bf16 fits 16 blocks twice");
        Plan partial = h100.explicit("pipe", 16, 0, 16384, 262144, 4);
        assertTrue(partial.staged() < partial.chunk(), "256k fp32: 256 KiB a block double-buffered do not fit; part of each slice is re-read");
        assertEquals("d4j_kd_pipe16p_f32", partial.kernel(), "the partly staged pipe kernel");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("pipe", 8, 0, 16384, 262144, 4), "partly staged pipes: 16 blocks only");
        assertEquals(partial.staged() * 2 * 4 * 2, partial.sharedBytes());
        assertTrue(partial.sharedBytes() <= OPTIN_H100 - DistillKernels.STATIC_SHARED_BYTES);
        assertEquals(8192, h100.explicit("pipe", 16, 0, 16384, 262144, 4, 128 * 1024).staged(), "128 KiB for both buffers: 8k columns each");
        assertEquals("d4j_kd_pipe16_f32", h100.explicit("pipe", 16, 0, 16384, 131072, 4, 128 * 1024).kernel(), "128k fits whole: the whole-slice kernel");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("pipe", 1, 0, 16384, 16000, 4), "a whole slice, twice, must fit");
        assertThrows(IllegalArgumentException.class, () -> sm80.explicit("pipe", 2, 0, 16384, 8000, 4), "clusters need sm_90");
        assertEquals("d4j_kd_pipe_f32", sm80.explicit("pipe", 1, 0, 16384, 8000, 4).kernel(), "cp.async: sm_80 has it");
        assertTrue(h100.explicit("pipe", 1, 0, 16384, 8000, 4).blocks() < h100.explicit("block", 1, 0, 16384, 8000, 4).blocks(),
            "twice the shared memory: fewer resident blocks");
    }

    @Test
    void warpPlansHoldTheRowInRegistersUpTo1024Columns() {
        assertEquals(h100.plan(16384, 512, 4), h100.explicit("warp", 1, 0, 16384, 512, 4), "the planner's warp plan is the explicit one");
        Plan w32 = h100.explicit("warp", 1, 0, 16384, 1000, 4);
        assertEquals("d4j_kd_warp32_f32", w32.kernel(), "1,000 columns: 32 values a lane");
        assertEquals(DistillKernels.WARP_THREADS, w32.threads());
        assertEquals(2048, w32.blocks(), "16,384 rows, 8 a block");
        assertEquals(h100.maxBlocks(), h100.explicit("warp", 1, 0, 1 << 20, 1000, 4).blocks(), "a million rows: the grid's cap, blocks loop over rows");
        assertEquals("d4j_kd_warp32_bf16", h100.explicit("warp", 1, 0, 16384, 1024, 2).kernel());
        Plan small = h100.explicit("warp", 1, 3, 100, 1000, 4, Long.MAX_VALUE, 128);
        assertEquals(25, small.blocks(), "100 rows, 4 a block of 128 threads");
        assertEquals(132 * 3, h100.explicit("warp", 1, 3, 16384, 1000, 4, Long.MAX_VALUE, 128).blocks(), "3 blocks an SM");
        assertEquals("block", h100.plan(16384, 1000, 4).regime(), "the planner keeps the block at 1k until warp32 is measured");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("warp", 1, 0, 16384, 1025, 4), "beyond 32 values a lane");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("warp", 1, 0, 16384, 1000, 4, Long.MAX_VALUE, 512), "the launch bound is 256");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("warp", 2, 0, 16384, 1000, 4), "no clusters");
    }

    @Test
    void splitPlansCutRowsIntoSlicesHeldByWholeGroups() {
        Plan p = h100.explicit("split", 1, 0, 16384, 131072, 4);
        assertEquals("d4j_kd_split_f32", p.kernel());
        assertEquals(2048, p.chunk(), "16 KiB of student + teacher a buffer: 2,048 fp32 columns");
        assertEquals(p.chunk(), p.staged());
        assertEquals(2 * 2048 * 2 * 4, p.sharedBytes(), "two buffers of [student | teacher]");
        assertEquals(256, p.threads(), "8 columns a thread");
        assertEquals(0, p.blocks() % 64, "whole groups of 64 slices: " + p);
        assertEquals(512, p.blocks(), "4 blocks an SM (64 registers assumed) = 528, 8 whole groups of 64");
        Plan bf16 = h100.explicit("split", 1, 0, 16384, 262144, 2);
        assertEquals(4096, bf16.chunk(), "bf16: twice the columns in the same bytes");
        assertEquals(DistillKernels.SPLIT_THREADS, bf16.threads(), "16 columns a thread: the _pg kernel is compiled for 256 threads at most");
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("split", 1, 0, 16384, 131072, 4, Long.MAX_VALUE, 512));
        Plan one = h100.explicit("split", 1, 0, 16384, 1000, 4);
        assertEquals(1000, one.chunk(), "a row shorter than a slice is one slice");
        assertEquals(128, one.threads());
        Plan odd = h100.explicit("split", 1, 0, 16384, 4097, 4);
        assertEquals(1368, odd.chunk(), "3 slices evened out (a multiple of 8): 1368 + 1368 + 1361");
        assertEquals(0, odd.blocks() % 3);
        assertEquals(4096, h100.explicit("split", 1, 0, 16384, 131072, 4, 64 * 1024).chunk(), "64 KiB for both buffers: 4,096 columns a slice");
        assertEquals(3 * 128, h100.explicit("split", 1, 0, 3, 262144, 4).blocks(), "no more groups than rows");
        assertEquals("d4j_kd_split_f32", sm80.explicit("split", 1, 0, 16384, 262144, 4).kernel(), "no clusters needed: sm_80 runs it");
        // the ring fits the scratch for every grid: it starts past the largest grid's partials (2 x maxBlocks),
        // flags at fixed places (4 x maxBlocks words), then for R = 2 G / K ring rows (K > 1; one slice
        // a row publishes nothing) R K x 5 slice statistics, R x 5 row statistics, R K x 2 doubles of
        // pg slots and R doubles of row pg (the _pg kernel): R (9 K + 7) floats
        for (DistillKernels k : new DistillKernels[] {h100, sm80}) {
            for (long cols : new long[] {513, 1000, 4097, 32000, 131072, 262144}) {
                for (long stage : new long[] {Long.MAX_VALUE, 64 * 1024, 8 * 1024}) {
                    for (int bytes : new int[] {2, 4}) {
                        Plan q;
                        try {
                            q = k.explicit("split", 1, 0, 1 << 20, cols, bytes, stage);
                        } catch (IllegalArgumentException tooManySlices) {
                            continue;
                        }
                        long slices = (cols + q.chunk() - 1) / q.chunk();
                        assertEquals(0, q.blocks() % slices, q + ": whole groups");
                        assertTrue(q.chunk() % 8 == 0 && (slices - 1) * q.chunk() < cols, q + ": no empty slice");
                        long rings = 2L * q.blocks() / slices;
                        long ring = 6L * k.maxBlocks() + (slices == 1 ? 0 : rings * (9 * slices + 7));
                        assertEquals(0, (5 * rings * (slices + 1)) % 2, q + ": the pg doubles 8-byte aligned");
                        assertTrue(ring <= k.scratchFloats(), q + ": ring of " + ring + " floats in a scratch of " + k.scratchFloats());
                        assertTrue(q.blocks() <= k.maxBlocks(), q.toString());
                    }
                }
            }
        }
    }
}
