package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import org.distill4j.core.Activation;
import org.junit.jupiter.api.Test;

/**
 * oneDNN's GELU (exact and tanh) forward and backward against the double-precision definitions our
 * Java loops evaluate ({@link CpuBackend#activate}, {@link CpuBackend#derivative}): within 1e-5 of
 * max(|value|, 1) on 100,003 values spread over [-12, 12] (an odd length: a vector tail), with
 * dy random. Skips where oneDNN is not the engine. Seeded: -Ddistill4j.test.seed=N.
 */
class OnednnEltwiseTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    @Test
    void geluForwardAndBackwardMatchTheDefinitions() {
        if (!OnednnEltwise.enabled()) return;
        Random r = new Random(seed);
        int n = 100_003;
        float[] x = new float[n], dy = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (r.nextDouble() * 24 - 12);
            dy[i] = (float) r.nextGaussian();
        }
        for (boolean tanh : new boolean[] {true, false}) {
            Activation kind = tanh ? Activation.GELU_TANH : Activation.GELU;
            try (Arena a = Arena.ofConfined()) {
                MemorySegment xs = a.allocateFrom(ValueLayout.JAVA_FLOAT, x), dys = a.allocateFrom(ValueLayout.JAVA_FLOAT, dy);
                MemorySegment y = a.allocate(4L * n), dx = a.allocate(4L * n);
                assertTrue(OnednnEltwise.geluForward(tanh, xs, y, n));
                assertTrue(OnednnEltwise.geluBackward(tanh, xs, dys, dx, n));
                double worstY = 0, worstDx = 0;
                for (int i = 0; i < n; i++) {
                    double wantY = CpuBackend.activate(kind, 0, x[i]), wantDx = CpuBackend.derivative(kind, 0, x[i], wantY) * dy[i];
                    double gotY = y.getAtIndex(ValueLayout.JAVA_FLOAT, i), gotDx = dx.getAtIndex(ValueLayout.JAVA_FLOAT, i);
                    worstY = Math.max(worstY, Math.abs(gotY - wantY) / Math.max(Math.abs(wantY), 1));
                    worstDx = Math.max(worstDx, Math.abs(gotDx - wantDx) / Math.max(Math.abs(wantDx), 1));
                    assertFalse(Double.isNaN(gotY) || Double.isNaN(gotDx), kind + " at " + x[i]);
                }
                String what = kind + " (seed " + seed + "): worst forward " + worstY + ", backward " + worstDx + " of max(|value|, 1)";
                System.out.println("OnednnEltwiseTest: " + what);
                assertTrue(worstY <= 1e-5 && worstDx <= 1e-5, what);
            }
        }
        System.out.println("OnednnEltwiseTest: " + OnednnEltwise.implementations());
    }
}
