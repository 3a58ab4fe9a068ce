package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.ConvGeometry;
import org.distill4j.core.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * oneDNN's convolution primitives (forward with and without bias, backward-data, backward-weights
 * with and without the bias gradient, accumulating or not) against a float64 oracle written from
 * the definition, on fresh random geometries: odd sizes, stride 1-3 per axis, padding, 1x1 kernels,
 * batch 1. Bound: |got - exact| <= 1e-5 * (the sum of the absolute terms) + 1e-30 per element,
 * float32's accumulated rounding over up to c*r*s (or k*r*s, n*oh*ow) terms with room for oneDNN's
 * blocked summation order. Serially and from four threads at once. Seeded: -Ddistill4j.test.seed=N
 * replays a run.
 */
class OnednnConvTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    @BeforeAll
    static void needsOnednn() {
        Assumptions.assumeTrue(Onednn.available(), "oneDNN not available here: " + Onednn.unavailableReason());
    }

    /** One random convolution problem with its operands. */
    record Problem(ConvGeometry g, Conv2dParams p, float[] x, float[] w, float[] bias, float[] dy, float[] dwBefore, float[] dbBefore) {
        static Problem random(Random r, int maxSpatial, int maxChannels) {
            int n = r.nextInt(4) == 0 ? 1 : 1 + r.nextInt(5), c = 1 + r.nextInt(maxChannels), k = 1 + r.nextInt(maxChannels);
            int kr = r.nextInt(4) == 0 ? 1 : 1 + r.nextInt(5), ks = r.nextBoolean() ? kr : 1 + r.nextInt(5);
            int padH = r.nextInt(Math.max(1, kr / 2 + 1)), padW = r.nextInt(Math.max(1, ks / 2 + 1));
            int strideH = 1 + r.nextInt(3), strideW = r.nextBoolean() ? strideH : 1 + r.nextInt(3);
            int h = Math.max(kr - 2 * padH, 1) + r.nextInt(maxSpatial), w = Math.max(ks - 2 * padW, 1) + r.nextInt(maxSpatial);
            Conv2dParams p = new Conv2dParams(padH, padW, strideH, strideW);
            int oh = p.outH(h, kr), ow = p.outW(w, ks);
            ConvGeometry g = new ConvGeometry(n, c, h, w, k, kr, ks, oh, ow);
            return new Problem(g, p, gaussian(r, (long) n * c * h * w), gaussian(r, (long) k * c * kr * ks), gaussian(r, k),
                gaussian(r, (long) n * k * oh * ow), gaussian(r, (long) k * c * kr * ks), gaussian(r, k));
        }

        int xAt(int b, int ci, int yy, int xx) {
            return ((b * g.c() + ci) * g.h() + yy) * g.w() + xx;
        }

        int wAt(int ko, int ci, int u, int v) {
            return ((ko * g.c() + ci) * g.r() + u) * g.s() + v;
        }

        int yAt(int b, int ko, int i, int j) {
            return ((b * g.k() + ko) * g.oh() + i) * g.ow() + j;
        }

        /** Calls body(b, ko, i, j, ci, u, v, xIndex) for every term of the convolution that touches the input (padding skipped). */
        void terms(Term body) {
            for (int b = 0; b < g.n(); b++) for (int ko = 0; ko < g.k(); ko++) for (int i = 0; i < g.oh(); i++) for (int j = 0; j < g.ow(); j++)
                for (int ci = 0; ci < g.c(); ci++) for (int u = 0; u < g.r(); u++) for (int v = 0; v < g.s(); v++) {
                    int yy = i * p.strideH() - p.padH() + u, xx = j * p.strideW() - p.padW() + v;
                    if (yy < 0 || yy >= g.h() || xx < 0 || xx >= g.w()) continue;
                    body.at(b, ko, i, j, ci, u, v, xAt(b, ci, yy, xx));
                }
        }

        interface Term {
            void at(int b, int ko, int i, int j, int ci, int u, int v, int xIndex);
        }

        /** Runs forward, backward-data and backward-weights on oneDNN (bias and accumulate as given) and checks all against float64. */
        void runAndCheck(String where, boolean withBias, boolean accumulate) {
            int ySize = dy.length;
            double[] y = new double[ySize], yMag = new double[ySize], dx = new double[x.length], dxMag = new double[x.length];
            double[] dw = new double[w.length], dwMag = new double[w.length], db = new double[g.k()], dbMag = new double[g.k()];
            terms((b, ko, i, j, ci, u, v, xi) -> {
                int wi = wAt(ko, ci, u, v), yi = yAt(b, ko, i, j);
                y[yi] += (double) x[xi] * w[wi];
                yMag[yi] += Math.abs((double) x[xi] * w[wi]);
                dx[xi] += (double) dy[yi] * w[wi];
                dxMag[xi] += Math.abs((double) dy[yi] * w[wi]);
                dw[wi] += (double) dy[yi] * x[xi];
                dwMag[wi] += Math.abs((double) dy[yi] * x[xi]);
            });
            for (int b = 0; b < g.n(); b++) for (int ko = 0; ko < g.k(); ko++) for (int i = 0; i < g.oh(); i++) for (int j = 0; j < g.ow(); j++) {
                int yi = yAt(b, ko, i, j);
                if (withBias) {
                    y[yi] += bias[ko];
                    yMag[yi] += Math.abs(bias[ko]);
                }
                db[ko] += dy[yi];
                dbMag[ko] += Math.abs(dy[yi]);
            }
            if (accumulate) {
                for (int i = 0; i < dw.length; i++) {
                    dw[i] += dwBefore[i];
                    dwMag[i] += Math.abs(dwBefore[i]);
                }
                for (int i = 0; i < db.length; i++) {
                    db[i] += dbBefore[i];
                    dbMag[i] += Math.abs(dbBefore[i]);
                }
            }
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment xs = arena.allocateFrom(JAVA_FLOAT, x), ws = arena.allocateFrom(JAVA_FLOAT, w), bs = arena.allocateFrom(JAVA_FLOAT, bias);
                MemorySegment dys = arena.allocateFrom(JAVA_FLOAT, dy), ys = arena.allocate(JAVA_FLOAT, ySize), dxs = arena.allocate(JAVA_FLOAT, x.length);
                MemorySegment dws = arena.allocateFrom(JAVA_FLOAT, dwBefore), dbs = arena.allocateFrom(JAVA_FLOAT, dbBefore);
                assertTrue(OnednnConv.forward(xs, ws, withBias ? bs : null, ys, g, p), where + ": oneDNN declined the forward of " + this);
                assertTrue(OnednnConv.backwardData(dys, ws, dxs, g, p, false, false), where + ": oneDNN declined the backward-data of " + this);
                assertTrue(OnednnConv.backwardWeights(xs, dys, dws, withBias ? dbs : null, g, p, accumulate, false, false),
                    where + ": oneDNN declined the backward-weights of " + this);
                check(where + " forward y", ys, y, yMag);
                check(where + " backward-data dx", dxs, dx, dxMag);
                check(where + " backward-weights dw", dws, dw, dwMag);
                if (withBias) check(where + " backward-weights dbias", dbs, db, dbMag);
                else for (int i = 0; i < g.k(); i++) assertEquals(dbBefore[i], dbs.getAtIndex(JAVA_FLOAT, i), where + ": dbias written without a bias");
            }
        }

        private void check(String what, MemorySegment got, double[] expected, double[] magnitude) {
            for (int i = 0; i < expected.length; i++) {
                double v = got.getAtIndex(JAVA_FLOAT, i);
                assertTrue(Math.abs(v - expected[i]) <= 1e-5 * magnitude[i] + 1e-30,
                    what + "[" + i + "] = " + v + ", expected " + expected[i] + " (terms' magnitude " + magnitude[i] + ") for " + this);
            }
        }

        @Override
        public String toString() {
            return g + " " + p;
        }
    }

    @Test
    void randomGeometriesMatchTheFloat64Oracle() {
        System.out.println("OnednnConvTest random seed " + seed + " (-Ddistill4j.test.seed replays it)");
        Random r = new Random(seed);
        for (int trial = 0; trial < 60; trial++) {
            Problem p = Problem.random(r, trial % 10 == 0 ? 20 : 9, trial % 10 == 0 ? 24 : 7);
            p.runAndCheck("trial " + trial + " (seed " + seed + ")", r.nextBoolean(), r.nextBoolean());
        }
        for (String impl : OnednnConv.implementations().stream().limit(6).toList()) System.out.println("OnednnConvTest: " + impl);
    }

    /** The shapes the benchmark CNN runs (3x3 pad 1, stride 1 and 2, 1x1 stride 2), at a small batch. */
    @Test
    void theBenchmarkCnnShapesMatchTheOracle() {
        System.out.println("OnednnConvTest cnn seed " + seed + " (-Ddistill4j.test.seed replays it)");
        Random r = new Random(seed);
        int[][] shapes = {{3, 16, 32, 3, 1, 1}, {16, 32, 32, 3, 2, 1}, {16, 32, 32, 1, 2, 0}, {32, 32, 16, 3, 1, 1}};
        for (int[] s : shapes) {
            Conv2dParams p = Conv2dParams.of(s[5], s[4]);
            int oh = p.outH(s[2], s[3]);
            ConvGeometry g = new ConvGeometry(2, s[0], s[2], s[2], s[1], s[3], s[3], oh, oh);
            Problem prob = new Problem(g, p, gaussian(r, 2L * s[0] * s[2] * s[2]), gaussian(r, (long) s[1] * s[0] * s[3] * s[3]), gaussian(r, s[1]),
                gaussian(r, 2L * s[1] * oh * oh), gaussian(r, (long) s[1] * s[0] * s[3] * s[3]), gaussian(r, s[1]));
            prob.runAndCheck("cnn shape " + java.util.Arrays.toString(s) + " (seed " + seed + ")", false, true);
        }
    }

    /** The same problems from four threads at once (contexts are per call), half of them holding the engine single-threaded. */
    @Test
    void concurrentCallersGetTheirOwnResults() throws Exception {
        System.out.println("OnednnConvTest concurrent seed " + seed + " (-Ddistill4j.test.seed replays it)");
        ExecutorService pool = Executors.newFixedThreadPool(4);
        try {
            List<Future<?>> results = new ArrayList<>();
            for (int t = 0; t < 4; t++) {
                long threadSeed = seed + t;
                boolean hold = t % 2 == 0;
                results.add(pool.submit(() -> {
                    Random r = new Random(threadSeed);
                    if (hold) CpuBlas.holdSingleThreaded();
                    try {
                        for (int i = 0; i < 15; i++) Problem.random(r, 8, 6).runAndCheck("thread seed " + threadSeed + " problem " + i, r.nextBoolean(), true);
                    } finally {
                        if (hold) CpuBlas.releaseSingleThreaded();
                    }
                    return null;
                }));
            }
            for (Future<?> f : results) f.get();
        } finally {
            pool.shutdown();
        }
    }

    /** Through the backend: oneDNN's convolution (the default engine here) equals the same geometry with bias added separately, within float32. */
    @Test
    void theBackendsFusedBiasMatchesConvolutionThenBiasAdd() {
        Random r = new Random(seed);
        CpuBackend cpu = CpuBackend.get();
        Conv2dParams p = new Conv2dParams(1, 0, 2, 1);
        try (Tensor x = cpu.fromArray(gaussian(r, 2 * 3 * 7 * 6), 2, 3, 7, 6); Tensor w = cpu.fromArray(gaussian(r, 4 * 3 * 3 * 2), 4, 3, 3, 2);
             Tensor b = cpu.fromArray(gaussian(r, 4), 4); Tensor fused = cpu.empty(org.distill4j.core.DType.F32, 2, 4, 4, 5);
             Tensor separate = cpu.empty(org.distill4j.core.DType.F32, 2, 4, 4, 5)) {
            cpu.conv2d(x, w, b, p, fused);
            cpu.conv2d(x, w, p, separate);
            cpu.channelBiasAdd(separate, b);
            float[] f = cpu.read(fused), s = cpu.read(separate);
            for (int i = 0; i < f.length; i++) assertEquals(s[i], f[i], 1e-5 * (1 + Math.abs(s[i])), "element " + i + " (seed " + seed + ")");
        }
    }

    static float[] gaussian(Random r, long n) {
        float[] x = new float[(int) n];
        for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
        return x;
    }
}
