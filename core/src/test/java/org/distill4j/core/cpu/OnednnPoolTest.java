package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.distill4j.core.Pool2dParams;
import org.distill4j.core.PoolMode;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * oneDNN's max and average pooling against our own definitions: the forward against
 * {@link CpuKernels#pool2d} (the Java path), the backward against an oracle written here from
 * {@link CpuBackend#pool2dBackward}'s rule (max: the whole gradient to the first maximum of the
 * window in row-major order; average: dy / (kernelH kernelW) to every element of the window,
 * padding counted). Max pooling must agree exactly (it copies values); average within
 * 1e-6 relative to the window's absolute sum (float32 summation order). Inputs are drawn from a
 * few small integers half the time so that windows hold ties. Seeded: -Ddistill4j.test.seed=N.
 */
class OnednnPoolTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    @BeforeAll
    static void needsOnednn() {
        Assumptions.assumeTrue(Onednn.available(), "oneDNN not available here: " + Onednn.unavailableReason());
    }

    @Test
    void randomGeometriesMatchOurPoolingIncludingTies() {
        System.out.println("OnednnPoolTest random seed " + seed + " (-Ddistill4j.test.seed replays it)");
        Random r = new Random(seed);
        int ties = 0;
        for (int trial = 0; trial < 80; trial++) {
            int kh = 1 + r.nextInt(4), kw = r.nextBoolean() ? kh : 1 + r.nextInt(4);
            Pool2dParams p = new Pool2dParams(kh, kw, 1 + r.nextInt(3), 1 + r.nextInt(3), r.nextInt(kh / 2 + 1), r.nextInt(kw / 2 + 1));
            int n = r.nextInt(3) == 0 ? 1 : 1 + r.nextInt(3), c = 1 + r.nextInt(5);
            int h = Math.max(1, kh - 2 * p.padH()) + r.nextInt(12), w = Math.max(1, kw - 2 * p.padW()) + r.nextInt(12);
            int oh = p.outH(h), ow = p.outW(w);
            boolean tied = r.nextBoolean();
            if (tied) ties++;
            float[] x = new float[n * c * h * w], dy = new float[n * c * oh * ow];
            for (int i = 0; i < x.length; i++) x[i] = tied ? r.nextInt(3) : (float) r.nextGaussian();
            for (int i = 0; i < dy.length; i++) dy[i] = (float) r.nextGaussian();
            for (PoolMode mode : PoolMode.values()) check(mode, p, x, dy, n, c, h, w, oh, ow, "trial " + trial + " " + mode + " " + p + " x ["
                + n + ", " + c + ", " + h + ", " + w + "] (seed " + seed + ")");
        }
        System.out.println("OnednnPoolTest: 80 geometries x {max, avg}, " + ties + " with tied windows; " + OnednnPool.implementations().stream()
            .limit(3).toList());
    }

    private static void check(PoolMode mode, Pool2dParams p, float[] x, float[] dy, int n, int c, int h, int w, int oh, int ow, String where) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment xs = arena.allocateFrom(JAVA_FLOAT, x), dys = arena.allocateFrom(JAVA_FLOAT, dy);
            MemorySegment y = arena.allocate(JAVA_FLOAT, dy.length), expectedY = arena.allocate(JAVA_FLOAT, dy.length);
            MemorySegment dx = arena.allocate(JAVA_FLOAT, x.length);
            assertTrue(OnednnPool.forward(mode, p, xs, y, n, c, h, w, oh, ow), where + ": oneDNN declined the forward");
            CpuKernels.pool2d(mode, p, xs, expectedY, 0, (long) n * c, h, w, oh, ow);
            for (int i = 0; i < dy.length; i++) {
                float got = y.getAtIndex(JAVA_FLOAT, i), want = expectedY.getAtIndex(JAVA_FLOAT, i);
                if (mode == PoolMode.MAX) assertEquals(want, got, where + ": y[" + i + "]");
                else assertEquals(want, got, 1e-6 * (1 + Math.abs(want)) * p.kernelH() * p.kernelW(), where + ": y[" + i + "]");
            }
            dx.fill((byte) 0x7f); // oneDNN must overwrite every element
            assertTrue(OnednnPool.backward(mode, p, xs, dys, dx, n, c, h, w, oh, ow), where + ": oneDNN declined the backward");
            double[] expected = new double[x.length], magnitude = new double[x.length];
            for (int plane = 0; plane < n * c; plane++) for (int i = 0; i < oh; i++) for (int j = 0; j < ow; j++) {
                double g = dy[(plane * oh + i) * ow + j];
                int best = -1;
                for (int u = 0; u < p.kernelH(); u++) for (int v = 0; v < p.kernelW(); v++) {
                    int yy = i * p.strideH() - p.padH() + u, xx = j * p.strideW() - p.padW() + v;
                    if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                    int at = (plane * h + yy) * w + xx;
                    if (mode == PoolMode.AVG) {
                        expected[at] += g / (p.kernelH() * p.kernelW());
                        magnitude[at] += Math.abs(g);
                    } else if (best < 0 || x[at] > x[best]) {
                        best = at;
                    }
                }
                if (best >= 0) {
                    expected[best] += g;
                    magnitude[best] += Math.abs(g);
                }
            }
            for (int i = 0; i < x.length; i++) {
                double got = dx.getAtIndex(JAVA_FLOAT, i);
                assertTrue(Math.abs(got - expected[i]) <= 1e-6 * magnitude[i] + 1e-30, where + ": dx[" + i + "] = " + got + ", expected " + expected[i]);
            }
        }
    }
}
