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
        assertEquals(new Plan("d4j_kd_warp1_f32", "warp", 1, 2112, 256, 0, 0), h100.plan(20000, 1, 4));
        assertEquals("d4j_kd_warp16_bf16", h100.plan(100, 512, 2).kernel());
        Plan p = h100.plan(16384, 513, 4);
        assertEquals("block", p.regime());
        assertEquals(520, p.chunk(), "chunks are whole 16-byte vectors of bf16 (8 elements)");
        assertEquals(128, p.threads(), "about 8 columns a thread, at least 128 threads");
        assertEquals("block", h100.plan(16384, 12288, 4).regime(), "96 KiB: the largest staged fp32 row of one block");
        Plan c = h100.plan(16384, 12289, 4);
        assertEquals("d4j_kd_cluster2_f32", c.kernel());
        assertEquals(6152, c.chunk());
        assertEquals(c.chunk() * 8, c.sharedBytes(), "student + teacher slices");
        assertEquals("d4j_kd_cluster4_f32", h100.plan(16384, 32000, 4).kernel());
        assertEquals("d4j_kd_cluster8_f32", h100.plan(16384, 98304, 4).kernel());
        assertEquals("reread", h100.plan(16384, 98305, 4).regime());
        assertEquals("d4j_kd_cluster8_bf16", h100.plan(16384, 131072, 2).kernel(), "bf16 halves the staged bytes");
        assertEquals("reread", sm80.plan(16384, 12289, 4).regime(), "no clusters before sm_90");
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
                        assertTrue(p.sharedBytes() <= OPTIN_H100 - 1024, p.toString());
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
        assertThrows(IllegalArgumentException.class, () -> h100.explicit("split", 1, 0, 10, 32000, 4));
        assertEquals(132, h100.explicit("reread", 1, 1, 16384, 262144, 4).blocks(), "one block per SM when asked");
    }
}
