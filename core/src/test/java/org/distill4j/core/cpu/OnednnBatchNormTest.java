package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * oneDNN's training batch norm ({@link OnednnBatchNorm}) against a float64 oracle written here
 * from {@link CpuBackend#batchNormTrain}'s contract: y, saveMean, saveInvStd = 1 / sqrt(biased
 * var + eps), the running statistics (PyTorch's momentum, the unbiased variance), and the
 * backward's dx, dgamma, dbeta from the saved statistics. Random shapes [N, C, H, W] with odd C
 * (oneDNN pads its 16-channel block), N = 1 and two values per channel among them; x has a
 * per-channel offset up to twice its spread. Tolerances are 1e-5 relative to each value's
 * magnitude (the sum of the absolute terms it is made of), times the channel's condition
 * (|mean| + max |x|) invStd for what goes through x - mean: oneDNN computes in float32, so mean
 * carries a rounding of |mean|'s size into x - mean; the oracle is double. A wrong convention
 * (biased running variance, momentum the other way, a missing term of dx) is off by far more.
 * Seeded: -Ddistill4j.test.seed=N.
 */
class OnednnBatchNormTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private static final double TOLERANCE = 1e-5;

    @BeforeAll
    static void needsOnednn() {
        Assumptions.assumeTrue(Onednn.available(), "oneDNN not available here: " + Onednn.unavailableReason());
    }

    @Test
    void randomShapesMatchTheFloat64Oracle() {
        System.out.println("OnednnBatchNormTest random seed " + seed + " (-Ddistill4j.test.seed replays it)");
        Random r = new Random(seed);
        int[][] fixed = {{1, 3, 1, 2}, {1, 1, 2, 1}, {2, 17, 5, 7}, {3, 16, 16, 16}, {1, 33, 4, 4}};
        for (int trial = 0; trial < 40; trial++) {
            int n, c, h, w;
            if (trial < fixed.length) {
                n = fixed[trial][0];
                c = fixed[trial][1];
                h = fixed[trial][2];
                w = fixed[trial][3];
            } else {
                n = r.nextInt(3) == 0 ? 1 : 1 + r.nextInt(6);
                c = 1 + r.nextInt(40);
                h = 1 + r.nextInt(12);
                w = 1 + r.nextInt(12);
                if (n * h * w < 2) w = 2;
            }
            check(r, n, c, h, w, "trial " + trial + " x [" + n + ", " + c + ", " + h + ", " + w + "] (seed " + seed + ")");
        }
        System.out.println("OnednnBatchNormTest: 40 shapes; " + OnednnBatchNorm.implementations().stream().limit(2).toList());
    }

    /** CpuBackend routes a small BatchNorm2d of 32 channels to oneDNN, and its results meet the oracle there too. */
    @Test
    void cpuBackendRoutesASmallBatchNormOfThirtyTwoChannelsToOnednn() {
        Assumptions.assumeTrue(CpuBlas.engine() == CpuEngine.ONEDNN, "the CPU engine here is " + CpuBlas.provider());
        Random r = new Random(seed + 1);
        int n = 4, c = 32, h = 6, w = 5, inner = h * w;
        float[] x = input(r, n, c, inner), gamma = gaussian(r, c), beta = gaussian(r, c), dy = gaussian(r, n * c * inner), rm0 = gaussian(r, c);
        float[] rv0 = new float[c];
        for (int i = 0; i < c; i++) rv0[i] = 0.5f + r.nextFloat();
        CpuBackend cpu = CpuBackend.get();
        long[] shape = {n, c, h, w};
        int keysBefore = OnednnBatchNorm.implementations().size();
        try (Tensor tx = cpu.fromArray(x, shape); Tensor tg = cpu.fromArray(gamma, c); Tensor tb = cpu.fromArray(beta, c);
             Tensor rm = cpu.fromArray(rm0, c); Tensor rv = cpu.fromArray(rv0, c); Tensor y = cpu.empty(DType.F32, shape);
             Tensor sm = cpu.empty(DType.F32, c); Tensor si = cpu.empty(DType.F32, c); Tensor tdy = cpu.fromArray(dy, shape);
             Tensor dx = cpu.empty(DType.F32, shape); Tensor dg = cpu.empty(DType.F32, c); Tensor db = cpu.empty(DType.F32, c)) {
            cpu.batchNormTrain(tx, tg, tb, rm, rv, 0.1f, 1e-5f, y, sm, si);
            cpu.batchNormBackward(tx, tdy, tg, sm, si, dx, dg, db);
            Oracle o = new Oracle(x, gamma, beta, dy, rm0, rv0, n, c, inner, 0.1, 1e-5);
            o.assertMatches(y.data(), sm.data(), si.data(), rm.data(), rv.data(), dx.data(), dg.data(), db.data(), "CpuBackend [4, 32, 6, 5] (seed " + seed + ")");
        }
        assertTrue(OnednnBatchNorm.implementations().stream().anyMatch(s -> s.startsWith("[" + OnednnBatchNorm.FORWARD_TRAINING + ", 4, 32, 30,")),
            "CpuBackend did not run [4, 32, 6, 5] on oneDNN: " + OnednnBatchNorm.implementations() + " (" + keysBefore + " before)");
        assertFalse(OnednnBatchNorm.implementations().stream().anyMatch(s -> s.contains("declined")), OnednnBatchNorm.implementations().toString());
    }

    private static void check(Random r, int n, int c, int h, int w, String where) {
        int inner = h * w;
        float[] x = input(r, n, c, inner), gamma = gaussian(r, c), beta = gaussian(r, c), dy = gaussian(r, n * c * inner), rm0 = gaussian(r, c);
        float[] rv0 = new float[c];
        for (int i = 0; i < c; i++) rv0[i] = 0.5f + r.nextFloat();
        float momentum = 0.05f + 0.3f * r.nextFloat(), eps = r.nextBoolean() ? 1e-5f : 1e-3f;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment xs = arena.allocateFrom(JAVA_FLOAT, x), gs = arena.allocateFrom(JAVA_FLOAT, gamma), bs = arena.allocateFrom(JAVA_FLOAT, beta);
            MemorySegment rm = arena.allocateFrom(JAVA_FLOAT, rm0), rv = arena.allocateFrom(JAVA_FLOAT, rv0), dys = arena.allocateFrom(JAVA_FLOAT, dy);
            MemorySegment y = arena.allocate(JAVA_FLOAT, x.length), sm = arena.allocate(JAVA_FLOAT, c), si = arena.allocate(JAVA_FLOAT, c);
            MemorySegment dx = arena.allocate(JAVA_FLOAT, x.length), dg = arena.allocate(JAVA_FLOAT, c), db = arena.allocate(JAVA_FLOAT, c);
            for (MemorySegment out : new MemorySegment[] {y, sm, si, dx, dg, db}) out.fill((byte) 0x7f); // every element must be written
            assertTrue(OnednnBatchNorm.forwardTraining(xs, gs, bs, rm, rv, momentum, eps, y, sm, si, n, c, inner, false, false), where + ": oneDNN declined the forward");
            assertTrue(OnednnBatchNorm.backward(xs, dys, gs, sm, si, dx, dg, db, n, c, inner, false, false, false), where + ": oneDNN declined the backward");
            new Oracle(x, gamma, beta, dy, rm0, rv0, n, c, inner, momentum, eps).assertMatches(y, sm, si, rm, rv, dx, dg, db, where);
        }
    }

    /** x [n, c, inner]: per channel an offset in [-2, 2) and a spread in [1, 2) around it. */
    private static float[] input(Random r, int n, int c, int inner) {
        double[] offset = new double[c], spread = new double[c];
        for (int ch = 0; ch < c; ch++) {
            offset[ch] = 4 * r.nextDouble() - 2;
            spread[ch] = 1 + r.nextDouble();
        }
        float[] x = new float[n * c * inner];
        for (int i = 0; i < x.length; i++) {
            int ch = (i / inner) % c;
            x[i] = (float) (offset[ch] + spread[ch] * r.nextGaussian());
        }
        return x;
    }

    private static float[] gaussian(Random r, int length) {
        float[] a = new float[length];
        for (int i = 0; i < length; i++) a[i] = (float) r.nextGaussian();
        return a;
    }

    /** Batch norm's training forward and backward in double, with each result's magnitude (the sum of its terms' absolute values). */
    private static final class Oracle {
        final int n, c, inner;
        final double[] y, yMag, mean, invStd, condition, runningMean, runningVar, dx, dxMag, dgamma, dgammaMag, dbeta, dbetaMag;

        Oracle(float[] x, float[] gamma, float[] beta, float[] dy, float[] rm0, float[] rv0, int n, int c, int inner, double momentum, double eps) {
            this.n = n;
            this.c = c;
            this.inner = inner;
            int size = x.length;
            y = new double[size];
            yMag = new double[size];
            dx = new double[size];
            dxMag = new double[size];
            mean = new double[c];
            invStd = new double[c];
            condition = new double[c];
            runningMean = new double[c];
            runningVar = new double[c];
            dgamma = new double[c];
            dgammaMag = new double[c];
            dbeta = new double[c];
            dbetaMag = new double[c];
            double count = (double) n * inner;
            for (int ch = 0; ch < c; ch++) {
                double sum = 0, sq = 0, largest = 0;
                for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) {
                    sum += x[(b * c + ch) * inner + i];
                    largest = Math.max(largest, Math.abs(x[(b * c + ch) * inner + i]));
                }
                double m = sum / count;
                for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) sq += Math.pow(x[(b * c + ch) * inner + i] - m, 2);
                double var = sq / count, is = 1 / Math.sqrt(var + eps);
                mean[ch] = m;
                invStd[ch] = is;
                condition[ch] = 1 + (Math.abs(m) + largest) * is;
                runningMean[ch] = (1 - momentum) * rm0[ch] + momentum * m;
                runningVar[ch] = (1 - momentum) * rv0[ch] + momentum * var * count / (count - 1);
                double sumDy = 0, sumDyXhat = 0, absDy = 0, absDyXhat = 0;
                for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) {
                    int at = (b * c + ch) * inner + i;
                    double xhat = (x[at] - m) * is;
                    y[at] = xhat * gamma[ch] + beta[ch];
                    yMag[at] = (Math.abs(xhat) + 1) * Math.abs(gamma[ch]) + Math.abs(beta[ch]);
                    sumDy += dy[at];
                    sumDyXhat += dy[at] * xhat;
                    absDy += Math.abs(dy[at]);
                    absDyXhat += Math.abs(dy[at] * xhat);
                }
                dgamma[ch] = sumDyXhat;
                dgammaMag[ch] = absDyXhat;
                dbeta[ch] = sumDy;
                dbetaMag[ch] = absDy;
                for (int b = 0; b < n; b++) for (int i = 0; i < inner; i++) {
                    int at = (b * c + ch) * inner + i;
                    double xhat = (x[at] - m) * is, scale = gamma[ch] * is / count;
                    dx[at] = scale * (count * dy[at] - sumDy - xhat * sumDyXhat);
                    dxMag[at] = Math.abs(scale) * (count * Math.abs(dy[at]) + absDy + Math.abs(xhat) * absDyXhat);
                }
            }
        }

        void assertMatches(MemorySegment gotY, MemorySegment saveMean, MemorySegment saveInvStd, MemorySegment rm, MemorySegment rv, MemorySegment gotDx,
                           MemorySegment gotDgamma, MemorySegment gotDbeta, String where) {
            for (int ch = 0; ch < c; ch++) {
                double k = condition[ch];
                // The mean's magnitude: the spread of the channel's values (1 / invStd) plus its size.
                near(mean[ch], saveMean.getAtIndex(JAVA_FLOAT, ch), Math.abs(mean[ch]) + 1 / invStd[ch], where + ": saveMean[" + ch + "]");
                near(invStd[ch], saveInvStd.getAtIndex(JAVA_FLOAT, ch), k * invStd[ch], where + ": saveInvStd[" + ch + "]");
                near(runningMean[ch], rm.getAtIndex(JAVA_FLOAT, ch), Math.abs(runningMean[ch]) + 1 / invStd[ch], where + ": runningMean[" + ch + "]");
                near(runningVar[ch], rv.getAtIndex(JAVA_FLOAT, ch), k * Math.abs(runningVar[ch]), where + ": runningVar[" + ch + "] (unbiased)");
                near(dgamma[ch], gotDgamma.getAtIndex(JAVA_FLOAT, ch), k * dgammaMag[ch], where + ": dgamma[" + ch + "]");
                near(dbeta[ch], gotDbeta.getAtIndex(JAVA_FLOAT, ch), dbetaMag[ch], where + ": dbeta[" + ch + "]");
            }
            for (int i = 0; i < y.length; i++) {
                double k = condition[(i / inner) % c];
                near(y[i], gotY.getAtIndex(JAVA_FLOAT, i), k * yMag[i], where + ": y[" + i + "]");
                near(dx[i], gotDx.getAtIndex(JAVA_FLOAT, i), k * dxMag[i], where + ": dx[" + i + "]");
            }
        }

        private static void near(double expected, float got, double magnitude, String what) {
            assertTrue(Math.abs(got - expected) <= TOLERANCE * magnitude + 1e-30, what + " = " + got + ", expected " + expected + " (magnitude " + magnitude + ")");
        }
    }
}
