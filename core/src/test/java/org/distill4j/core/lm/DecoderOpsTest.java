package org.distill4j.core.lm;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Locale;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.function.ToDoubleFunction;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;

/**
 * Every decoder op against a plain double-precision reference written here (naive loops, the
 * textbook formula, no shared code with DecoderOps), two checks per op:
 *
 * <ul>
 *   <li><b>forward</b>: DecoderOps' float32 forward against the double reference on the same
 *       (float-representable) inputs, max |got - want| / max |want| over the output <= {@link #FORWARD};
 *   <li><b>backward</b>: DecoderOps' float32 backward against central finite differences of the
 *       double reference (step 1e-6 relative; in double the quotient is good to ~1e-9 of the
 *       gradient's scale, which {@link #numericGradient} checks against a second step), max |got -
 *       want| / max |want| per gradient <= {@link #BACKWARD}. What remains is float32 rounding of
 *       the backward itself (epsilon 6e-8 times a few accumulated terms).
 * </ul>
 *
 * Parameter gradients are pre-filled with random values (multiples of 1/8, exact in float) and
 * the increment is compared, which checks that the backward accumulates (+=) as it promises.
 * Every check runs twice: serial, and with every loop split across the fork-join pool
 * ({@link DecoderOps#setParallelWork}(1)), so the column-split sums and the per-head tasks are
 * checked on these tiny shapes too. Inputs are fresh every run; the seed is printed and in every
 * failure message, and -Ddistill4j.test.seed=N replays one. The worst error of each check is
 * printed at the end.
 */
class DecoderOpsTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);

    DecoderOpsTest() {
        System.out.println("DecoderOpsTest random seed " + seed + " (fresh inputs every run; -Ddistill4j.test.seed=" + seed + " replays it)");
    }

    /** Float32 forward against double: a few float roundings of the output's scale (worst seen over 6 seeds: 2.2e-7, llama3 RoPE). */
    private static final double FORWARD = 1e-6;
    /**
     * Float32 backward against double finite differences (worst seen over 6 seeds: 4.4e-7, LayerNorm's
     * dw on a row of mean 3 and spread 0.1, where the float32 mean saved by the forward costs
     * ulp(3) / 0.1 ~ 2e-6 relative per element; the old float-quotient checks allowed 3e-3).
     */
    private static final double BACKWARD = 3e-6;
    /** The finite difference's own error (step h against step 2h), relative to the gradient's scale (worst seen: 3.4e-8). */
    private static final double QUOTIENT = 3e-7;
    private static final double STEP = 1e-6;

    /** Worst relative error of each check over the run, printed once at the end. */
    private static final Map<String, Double> WORST = new TreeMap<>();

    @AfterAll
    static void report() {
        synchronized (WORST) {
            StringBuilder s = new StringBuilder("DecoderOpsTest worst errors (forward: float32 vs double reference; backward: float32 vs double finite differences):");
            WORST.forEach((k, v) -> s.append(String.format(Locale.ROOT, "%n  %-58s %.2e", k, v)));
            System.out.println(s);
        }
    }

    private static void record(String what, double error) {
        synchronized (WORST) {
            WORST.merge(what, error, Math::max);
        }
    }

    /** Runs body serially and with every loop of DecoderOps split across the fork-join pool. */
    private static void bothWays(Runnable body) {
        body.run();
        long old = DecoderOps.setParallelWork(1);
        try {
            body.run();
        } finally {
            DecoderOps.setParallelWork(old);
        }
    }

    // ---- inputs and comparisons

    private float[] randn(int n, double scale) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) (random.nextGaussian() * scale);
        return v;
    }

    /** Random multiples of 1/8 in [-1, 1]: exact in float, so (g + c) - c recovers g to g's own rounding. */
    private float[] eighths(int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (random.nextInt(17) - 8) / 8f;
        return v;
    }

    private static double[] d(float[] v) {
        double[] out = new double[v.length];
        for (int i = 0; i < v.length; i++) out[i] = v[i];
        return out;
    }

    private static MemorySegment seg(Arena a, float[] v) {
        MemorySegment s = a.allocate(Math.max(4, 4L * v.length), 64);
        MemorySegment.copy(v, 0, s, JAVA_FLOAT, 0, v.length);
        return s;
    }

    private static float[] read(MemorySegment s, int n) {
        float[] v = new float[n];
        MemorySegment.copy(s, JAVA_FLOAT, 0, v, 0, n);
        return v;
    }

    /** What the backward added to a gradient pre-filled with {@code before}. */
    private static float[] increment(MemorySegment grad, float[] before) {
        float[] v = read(grad, before.length);
        for (int i = 0; i < v.length; i++) v[i] -= before[i];
        return v;
    }

    private static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) s += a[i] * b[i];
        return s;
    }

    private static double maxAbs(double[] v) {
        double m = 0;
        for (double x : v) m = Math.max(m, Math.abs(x));
        return m;
    }

    private void forward(String what, float[] got, double[] want) {
        double scale = Math.max(maxAbs(want), 1e-30), err = 0;
        int at = 0;
        for (int i = 0; i < want.length; i++) {
            double e = Math.abs(got[i] - want[i]);
            if (e > err) {
                err = e;
                at = i;
            }
        }
        record(what + " forward", err / scale);
        assertTrue(err <= FORWARD * scale, what + " forward [" + at + "]: float32 " + got[at] + ", double reference " + want[at] + " (max |reference| "
            + scale + ", seed " + seed + ")");
    }

    /**
     * Central differences of objective at every element of inputs[which], in double, step 1e-6
     * (inputs are of order 1; the quotient divides by the step as represented); the quotient with twice the step must agree to
     * {@link #QUOTIENT} of the gradient's scale (the reference is smooth there and the step small
     * enough), else the check itself would be too coarse to judge a float32 backward.
     */
    private double[] numericGradient(String what, double[][] inputs, int which, ToDoubleFunction<double[][]> objective) {
        double[] x = inputs[which], grad = new double[x.length], coarse = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double old = x[i], h = STEP;
            grad[i] = quotient(inputs, x, i, old, h, objective);
            coarse[i] = quotient(inputs, x, i, old, 2 * h, objective);
        }
        double scale = Math.max(maxAbs(grad), 1e-30), err = 0;
        for (int i = 0; i < x.length; i++) err = Math.max(err, Math.abs(grad[i] - coarse[i]));
        record(what + " (finite difference h vs 2h)", err / scale);
        assertTrue(err <= QUOTIENT * scale, what + ": the finite differences with steps h and 2h differ by " + err + " of " + scale + " (seed " + seed + ")");
        return grad;
    }

    private static double quotient(double[][] inputs, double[] x, int i, double old, double h, ToDoubleFunction<double[][]> objective) {
        double up = old + h, down = old - h;
        x[i] = up;
        double plus = objective.applyAsDouble(inputs);
        x[i] = down;
        double minus = objective.applyAsDouble(inputs);
        x[i] = old;
        return (plus - minus) / (up - down);
    }

    private void backward(String what, float[] analytic, double[] numeric) {
        double scale = Math.max(maxAbs(numeric), 1e-30), err = 0;
        int at = 0;
        for (int i = 0; i < numeric.length; i++) {
            double e = Math.abs(analytic[i] - numeric[i]);
            if (e > err) {
                err = e;
                at = i;
            }
        }
        record(what, err / scale);
        assertTrue(err <= BACKWARD * scale, what + "[" + at + "]: backward " + analytic[at] + ", finite difference " + numeric[at] + " (max |gradient| "
            + scale + ", seed " + seed + ")");
    }

    // ---- embeddings

    /** out[r, j] = wte[ids[r], j] + wpe[positions[r], j]. */
    private static double[] embeddingRef(double[] wte, double[] wpe, long[] ids, long[] pos, int d) {
        double[] out = new double[ids.length * d];
        for (int r = 0; r < ids.length; r++) {
            for (int j = 0; j < d; j++) out[r * d + j] = wte[(int) ids[r] * d + j] + (wpe == null ? 0 : wpe[(int) pos[r] * d + j]);
        }
        return out;
    }

    @Test
    void embedding() {
        int v = 7, p = 6, d = 5;
        long[] ids = {3, 1, 3, 6, 0, 3}, pos = {0, 1, 2, 0, 5, 5}; // id 3 three times, position 5 twice: the scatter adds
        int n = ids.length;
        float[] wte = randn(v * d, 1), wpe = randn(p * d, 1), g = randn(n * d, 1), dwte0 = eighths(v * d), dwpe0 = eighths(p * d);
        double[][] in = {d(wte), d(wpe)};
        double[] gd = d(g);
        double[] numWte = numericGradient("embedding dwte", in, 0, x -> dot(embeddingRef(x[0], x[1], ids, pos, d), gd));
        double[] numWpe = numericGradient("embedding dwpe", in, 1, x -> dot(embeddingRef(x[0], x[1], ids, pos, d), gd));
        bothWays(() -> {
            try (Arena a = Arena.ofShared()) {
                MemorySegment out = a.allocate(4L * n * d, 64), dwte = seg(a, dwte0), dwpe = seg(a, dwpe0);
                DecoderOps.embeddingForward(out, ids, pos, seg(a, wte), seg(a, wpe), d);
                forward("embedding (wte + wpe)", read(out, n * d), embeddingRef(in[0], in[1], ids, pos, d));
                DecoderOps.embeddingForward(out, ids, pos, seg(a, wte), null, d);
                forward("embedding (wte only)", read(out, n * d), embeddingRef(in[0], null, ids, pos, d));
                DecoderOps.embeddingBackward(dwte, dwpe, seg(a, g), ids, pos, d);
                backward("embedding dwte (repeated ids)", increment(dwte, dwte0), numWte);
                backward("embedding dwpe (repeated positions)", increment(dwpe, dwpe0), numWpe);
            }
        });
    }

    // ---- norms

    /** LayerNorm over rows of d: (x - mean) / sqrt(var + eps) w + b, biased variance. */
    private static double[] layerNormRef(double[] x, double[] w, double[] b, int n, int d, double eps) {
        double[] out = new double[n * d];
        for (int r = 0; r < n; r++) {
            double mean = 0, var = 0;
            for (int j = 0; j < d; j++) mean += x[r * d + j] / d;
            for (int j = 0; j < d; j++) var += (x[r * d + j] - mean) * (x[r * d + j] - mean) / d;
            for (int j = 0; j < d; j++) out[r * d + j] = (x[r * d + j] - mean) / Math.sqrt(var + eps) * w[j] + b[j];
        }
        return out;
    }

    @Test
    void layerNorm() {
        int n = 5, d = 12;
        float eps = 1e-5f;
        float[] x = randn(n * d, 1), w = randn(d, 1), b = randn(d, 1), g = randn(n * d, 1), dx0 = eighths(n * d), dw0 = eighths(d), db0 = eighths(d);
        for (int j = 0; j < d; j++) x[3 * d + j] = (float) (3 + 0.1 * random.nextGaussian()); // a row with a large mean and small spread
        double[][] in = {d(x), d(w), d(b)};
        double[] gd = d(g);
        ToDoubleFunction<double[][]> loss = t -> dot(layerNormRef(t[0], t[1], t[2], n, d, eps), gd);
        double[] numX = numericGradient("layerNorm dx", in, 0, loss), numW = numericGradient("layerNorm dw", in, 1, loss);
        double[] numB = numericGradient("layerNorm db", in, 2, loss);
        bothWays(() -> {
            for (boolean accumulate : new boolean[] {false, true}) {
                try (Arena a = Arena.ofShared()) {
                    MemorySegment xs = seg(a, x), ws = seg(a, w), out = a.allocate(4L * n * d, 64), mean = a.allocate(4L * n), rstd = a.allocate(4L * n);
                    MemorySegment dx = seg(a, accumulate ? dx0 : new float[n * d]), dw = seg(a, dw0), db = seg(a, db0);
                    DecoderOps.layerNormForward(out, mean, rstd, xs, ws, seg(a, b), n, d, eps);
                    forward("layerNorm", read(out, n * d), layerNormRef(in[0], in[1], in[2], n, d, eps));
                    DecoderOps.layerNormBackward(dx, dw, db, seg(a, g), xs, ws, mean, rstd, n, d, accumulate);
                    backward("layerNorm dx" + (accumulate ? " (accumulated)" : ""), accumulate ? increment(dx, dx0) : read(dx, n * d), numX);
                    backward("layerNorm dw", increment(dw, dw0), numW);
                    backward("layerNorm db", increment(db, db0), numB);
                }
            }
        });
    }

    /** RMSNorm of rows of d, {@code stride} apart from column {@code col}: x / sqrt(mean(x^2) + eps) w; other columns pass through. */
    private static double[] rmsNormRef(double[] x, double[] w, int n, int d, int stride, int col, double eps) {
        double[] out = x.clone();
        for (int r = 0; r < n; r++) {
            int o = r * stride + col;
            double ss = 0;
            for (int j = 0; j < d; j++) ss += x[o + j] * x[o + j] / d;
            for (int j = 0; j < d; j++) out[o + j] = x[o + j] / Math.sqrt(ss + eps) * w[j];
        }
        return out;
    }

    @Test
    void rmsNormOnStridedRows() {
        int n = 6, d = 8, stride = 20; // rows of 8 inside rows of 20, as DecoderModel reads a head of the q | k | v buffer
        float eps = 1e-6f;
        float[] x = randn(n * stride, 1), w = randn(d, 1), g = randn(n * stride, 1), dx0 = eighths(n * stride), dw0 = eighths(d);
        for (int j = 0; j < d; j++) x[2 * stride + j] *= 3e-3f; // a row of small values: eps (1e-6) is a tenth of its mean square
        double[][] in = {d(x), d(w)};
        double[] gd = new double[n * stride];
        for (int r = 0; r < n; r++) for (int j = 0; j < d; j++) gd[r * stride + j] = g[r * stride + j]; // the objective reads only the normalised columns
        ToDoubleFunction<double[][]> loss = t -> dot(rmsNormRef(t[0], t[1], n, d, stride, 0, eps), gd);
        double[] numX = numericGradient("rmsNorm dx", in, 0, loss), numW = numericGradient("rmsNorm dw", in, 1, loss);
        bothWays(() -> {
            for (boolean accumulate : new boolean[] {false, true}) {
                try (Arena a = Arena.ofShared()) {
                    MemorySegment xs = seg(a, x), ws = seg(a, w), out = seg(a, x), rstd = a.allocate(4L * n);
                    MemorySegment dx = seg(a, dx0), dw = seg(a, dw0);
                    DecoderOps.rmsNormForward(out, rstd, xs, ws, n, d, stride, eps);
                    forward("rmsNorm", read(out, n * stride), rmsNormRef(in[0], in[1], n, d, stride, 0, eps));
                    DecoderOps.rmsNormBackward(dx, dw, seg(a, d2f(gd)), xs, ws, rstd, n, d, stride, accumulate);
                    // Only the normalised columns of dx are the op's; the rest keep what they held.
                    float[] got = accumulate ? increment(dx, dx0) : read(dx, n * stride);
                    for (int r = 0; r < n; r++) {
                        for (int j = d; j < stride; j++) {
                            assertEquals(accumulate ? 0f : dx0[r * stride + j], got[r * stride + j], "rmsNorm dx outside the rows (seed " + seed + ")");
                            got[r * stride + j] = (float) numX[r * stride + j];
                        }
                    }
                    backward("rmsNorm dx" + (accumulate ? " (accumulated)" : ""), got, numX);
                    backward("rmsNorm dw", increment(dw, dw0), numW);
                }
            }
        });
    }

    private static float[] d2f(double[] v) {
        float[] f = new float[v.length];
        for (int i = 0; i < v.length; i++) f[i] = (float) v[i];
        return f;
    }

    /**
     * Qwen3's per-head q/k RMSNorm as DecoderModel runs it: over the [N, q | k | v] buffer, the q
     * heads with q_norm [hd] and the k heads with k_norm [hd] (one weight shared by the heads, so
     * its gradient sums over them), v untouched; the backward in place (dx = dout), as
     * DecoderModel.headNormBackward calls it.
     */
    @Test
    void perHeadQkNorm() {
        int n = 5, heads = 4, kvHeads = 2, hd = 6, a = heads * hd, kvw = kvHeads * hd, w = a + 2 * kvw;
        float eps = 1e-6f;
        float[] raw = randn(n * w, 1.5), qn = randn(hd, 1), kn = randn(hd, 1), g = randn(n * w, 1), dq0 = eighths(hd), dk0 = eighths(hd);
        double[][] in = {d(raw), d(qn), d(kn)};
        double[] gd = d(g);
        ToDoubleFunction<double[][]> loss = t -> dot(headNormRef(t[0], t[1], t[2], n, heads, kvHeads, hd, eps), gd);
        double[] numX = numericGradient("q/k norm dqkv", in, 0, loss), numQ = numericGradient("q/k norm dq_norm", in, 1, loss);
        double[] numK = numericGradient("q/k norm dk_norm", in, 2, loss);
        bothWays(() -> {
            try (Arena ar = Arena.ofShared()) {
                MemorySegment rs = seg(ar, raw), out = seg(ar, raw), qs = seg(ar, qn), ks = seg(ar, kn);
                MemorySegment qRstd = ar.allocate(4L * heads * n), kRstd = ar.allocate(4L * kvHeads * n);
                for (int h = 0; h < heads; h++) {
                    DecoderOps.rmsNormForward(DecoderOps.columns(out, h * hd), qRstd.asSlice(4L * h * n), DecoderOps.columns(rs, h * hd), qs, n, hd, w, eps);
                }
                for (int h = 0; h < kvHeads; h++) {
                    DecoderOps.rmsNormForward(DecoderOps.columns(out, a + h * hd), kRstd.asSlice(4L * h * n), DecoderOps.columns(rs, a + h * hd), ks, n, hd, w,
                        eps);
                }
                forward("q/k norm", read(out, n * w), headNormRef(in[0], in[1], in[2], n, heads, kvHeads, hd, eps));
                MemorySegment dqkv = seg(ar, g), dq = seg(ar, dq0), dk = seg(ar, dk0);
                for (int h = 0; h < heads; h++) {
                    MemorySegment c = DecoderOps.columns(dqkv, h * hd);
                    DecoderOps.rmsNormBackward(c, dq, c, DecoderOps.columns(rs, h * hd), qs, qRstd.asSlice(4L * h * n), n, hd, w, false);
                }
                for (int h = 0; h < kvHeads; h++) {
                    MemorySegment c = DecoderOps.columns(dqkv, a + h * hd);
                    DecoderOps.rmsNormBackward(c, dk, c, DecoderOps.columns(rs, a + h * hd), ks, kRstd.asSlice(4L * h * n), n, hd, w, false);
                }
                backward("q/k norm dqkv (in place; v passes through)", read(dqkv, n * w), numX);
                backward("q/k norm dq_norm (summed over heads)", increment(dq, dq0), numQ);
                backward("q/k norm dk_norm (summed over kv heads)", increment(dk, dk0), numK);
            }
        });
    }

    private static double[] headNormRef(double[] x, double[] qn, double[] kn, int n, int heads, int kvHeads, int hd, double eps) {
        int a = heads * hd, w = a + 2 * kvHeads * hd;
        double[] out = x;
        for (int h = 0; h < heads; h++) out = rmsNormRef(out, qn, n, hd, w, h * hd, eps);
        for (int h = 0; h < kvHeads; h++) out = rmsNormRef(out, kn, n, hd, w, a + h * hd, eps);
        return out;
    }

    // ---- rotary embeddings

    /** Rotates heads of width 2 half from column col of x [n, stride]: (a, b) -> (a cos - b sin, b cos + a sin), angle = pos invFreq[j], in double. */
    private static double[] ropeRef(double[] x, int n, int stride, int col, int heads, int half, long[] pos, float[] invFreq) {
        double[] out = x.clone();
        for (int r = 0; r < n; r++) {
            for (int h = 0; h < heads; h++) {
                int o = r * stride + col + h * 2 * half;
                for (int j = 0; j < half; j++) {
                    double angle = pos[r] * (double) invFreq[j], c = Math.cos(angle), s = Math.sin(angle), p = x[o + j], q = x[o + j + half];
                    out[o + j] = p * c - q * s;
                    out[o + j + half] = q * c + p * s;
                }
            }
        }
        return out;
    }

    /**
     * RoPE on the q heads and then the k heads of a q | k | v buffer (v passes through), as
     * DecoderModel calls it, with default and llama3-scaled inverse frequencies; the backward is
     * the inverse rotation of the incoming gradient, in place.
     */
    @Test
    void rope() {
        int heads = 3, kvHeads = 2, half = 4, hd = 2 * half, a = heads * hd, kvw = kvHeads * hd, w = a + 2 * kvw;
        long[] pos = {0, 3, 7, 2, 12, 5};
        int n = pos.length;
        for (DecoderConfig.Rope rope : new DecoderConfig.Rope[] {new DecoderConfig.Rope(10000, "default", 1, 0, 0, 0),
            new DecoderConfig.Rope(500000, "llama3", 8, 1, 4, 16)}) {
            float[] inv = rope.inverseFrequencies(hd);
            float[] x = randn(n * w, 1), g = randn(n * w, 1);
            double[][] in = {d(x)};
            double[] gd = d(g);
            ToDoubleFunction<double[][]> loss = t -> dot(ropeRef(ropeRef(t[0], n, w, 0, heads, half, pos, inv), n, w, a, kvHeads, half, pos, inv), gd);
            double[] numX = numericGradient("rope dx (" + rope.type() + ")", in, 0, loss);
            bothWays(() -> {
                try (Arena ar = Arena.ofShared()) {
                    MemorySegment cos = ar.allocate(4L * n * half), sin = ar.allocate(4L * n * half);
                    DecoderOps.ropeTables(cos, sin, pos, inv);
                    double[] wantCos = new double[n * half], wantSin = new double[n * half];
                    for (int r = 0; r < n; r++) {
                        for (int j = 0; j < half; j++) {
                            wantCos[r * half + j] = Math.cos(pos[r] * (double) inv[j]);
                            wantSin[r * half + j] = Math.sin(pos[r] * (double) inv[j]);
                        }
                    }
                    forward("rope tables cos (" + rope.type() + ")", read(cos, n * half), wantCos);
                    forward("rope tables sin (" + rope.type() + ")", read(sin, n * half), wantSin);
                    MemorySegment xs = seg(ar, x);
                    DecoderOps.rope(xs, 0, w, n, heads, cos, sin, half, false);
                    DecoderOps.rope(xs, a, w, n, kvHeads, cos, sin, half, false);
                    forward("rope (" + rope.type() + ")", read(xs, n * w), ropeRef(ropeRef(in[0], n, w, 0, heads, half, pos, inv), n, w, a, kvHeads, half, pos, inv));
                    MemorySegment dx = seg(ar, g);
                    DecoderOps.rope(dx, 0, w, n, heads, cos, sin, half, true);
                    DecoderOps.rope(dx, a, w, n, kvHeads, cos, sin, half, true);
                    backward("rope dx (" + rope.type() + ", inverse rotation)", read(dx, n * w), numX);
                }
            });
        }
    }

    // ---- attention

    /**
     * Causal attention in double, as AttentionShape lays it out: query i of batch b (absolute
     * position past + i) sees key j when j <= past + i and mask[b, j] != 0; scores scale q.k,
     * softmax over the visible keys; a query that sees no key gets probabilities 0 (output 0:
     * DecoderOps' rule for a fully masked row, which transformers' SDPA path also gives; see
     * docs/language-models.md). {@code keep} [B, H, tq, tk] (or null) multiplies the
     * probabilities before the values (attention dropout: 0 or 1 / (1 - p)). Returns out [B * tq, H * hd].
     */
    private static double[] attentionRef(int batch, int heads, int kvHeads, int hd, int tq, int tk, int past, double[] q, int ldQ, int qCol, double[] k,
                                         double[] v, int ldK, int kBatch, int kCol, int vCol, long[] mask, double scale, float[] keep) {
        int a = heads * hd;
        double[] out = new double[batch * tq * a];
        for (int b = 0; b < batch; b++) {
            for (int h = 0; h < heads; h++) {
                int g = h / (heads / kvHeads);
                for (int i = 0; i < tq; i++) {
                    double[] s = new double[tk];
                    boolean[] visible = new boolean[tk];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < tk; j++) {
                        visible[j] = j <= past + i && (mask == null || mask[b * tk + j] != 0);
                        if (!visible[j]) continue;
                        for (int c = 0; c < hd; c++) s[j] += q[(b * tq + i) * ldQ + qCol + h * hd + c] * k[b * kBatch + j * ldK + kCol + g * hd + c];
                        s[j] *= scale;
                        max = Math.max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < tk; j++) sum += visible[j] ? Math.exp(s[j] - max) : 0;
                    for (int j = 0; j < tk; j++) {
                        if (!visible[j]) continue;
                        double p = Math.exp(s[j] - max) / sum * (keep == null ? 1 : keep[((b * heads + h) * tq + i) * tk + j]);
                        for (int c = 0; c < hd; c++) out[(b * tq + i) * a + h * hd + c] += p * v[b * kBatch + j * ldK + vCol + g * hd + c];
                    }
                }
            }
        }
        return out;
    }

    /**
     * Training attention over one [B * T, q | k | v] buffer: GQA (4 query heads on 2 kv heads, and
     * on 1), plain multi-head, and with attention dropout (a fixed keep mask applied between the
     * scores and the values, and to dprobs in the backward's callback, as DecoderModel does). Row 0
     * is unpadded, row 1 left-padded by two (its first two queries see no key), row 2
     * right-padded by two.
     */
    @Test
    void maskedCausalAttention() {
        int batch = 3, t = 6, hd = 3;
        long[] mask = {1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
        for (int[] hk : new int[][] {{4, 2}, {4, 1}, {2, 2}}) {
            for (boolean dropout : new boolean[] {false, true}) {
                int heads = hk[0], kvHeads = hk[1], a = heads * hd, kvw = kvHeads * hd, w = a + 2 * kvw;
                float scale = (float) (1 / Math.sqrt(hd));
                float[] qkv = randn(batch * t * w, 1), g = randn(batch * t * a, 1);
                float[] keep = null;
                if (dropout) {
                    keep = new float[batch * heads * t * t];
                    for (int i = 0; i < keep.length; i++) keep[i] = random.nextDouble() < 0.25 ? 0f : (float) (1 / 0.75);
                }
                float[] keepMask = keep;
                String what = "attention H " + heads + " KV " + kvHeads + (dropout ? " dropout" : "");
                double[][] in = {d(qkv)};
                double[] gd = d(g);
                ToDoubleFunction<double[][]> loss = x -> dot(attentionRef(batch, heads, kvHeads, hd, t, t, 0, x[0], w, 0, x[0], x[0], w, t * w, a, a + kvw, mask,
                    scale, keepMask), gd);
                double[] numX = numericGradient(what + " dqkv", in, 0, loss);
                bothWays(() -> {
                    try (Arena ar = Arena.ofShared()) {
                        MemorySegment qs = seg(ar, qkv), probs = ar.allocate(4L * batch * heads * t * t), out = ar.allocate(4L * batch * t * a);
                        DecoderOps.AttentionShape shape = new DecoderOps.AttentionShape(batch, heads, kvHeads, hd, t, t, 0, qs, w, 0, qs, qs, w, t * w, a, a + kvw,
                            mask, scale);
                        DecoderOps.attentionScores(shape, probs);
                        MemorySegment used = probs, keepSeg = keepMask == null ? null : seg(ar, keepMask);
                        if (keepMask != null) {
                            used = ar.allocate(probs.byteSize());
                            for (int i = 0; i < keepMask.length; i++) DecoderOps.set(used, i, DecoderOps.f(probs, i) * keepMask[i]);
                        }
                        DecoderOps.attentionValues(shape, used, out, a);
                        forward(what, read(out, batch * t * a), attentionRef(batch, heads, kvHeads, hd, t, t, 0, in[0], w, 0, in[0], in[0], w, t * w, a, a + kvw,
                            mask, scale, keepMask));
                        MemorySegment dprobs = ar.allocate(probs.byteSize()), dqkv = ar.allocate(4L * batch * t * w); // zeroed, as the caller must
                        DecoderOps.attentionBackward(shape, probs, used, dprobs, seg(ar, g), a, dqkv, () -> {
                            if (keepSeg != null) for (int i = 0; i < keepMask.length; i++) DecoderOps.set(dprobs, i, DecoderOps.f(dprobs, i) * keepMask[i]);
                        });
                        backward(what + " dqkv", read(dqkv, batch * t * w), numX);
                    }
                });
            }
        }
    }

    /**
     * Decoding with a cache: 3 new queries after 4 cached tokens, keys and values in separate
     * [B, capacity, kvHeads * hd] buffers (capacity 9 > 7 keys), a padded first key in row 1
     * and a padded prefix in row 0 that covers its first new query (which sees no key: zeros).
     */
    @Test
    void attentionWithACacheOffset() {
        int batch = 2, heads = 4, kvHeads = 2, hd = 4, tq = 3, past = 4, tk = past + tq, cap = 9, a = heads * hd, kvw = kvHeads * hd;
        long[] mask = {0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1};
        float scale = (float) (1 / Math.sqrt(hd));
        float[] q = randn(batch * tq * a, 1), k = randn(batch * cap * kvw, 1), v = randn(batch * cap * kvw, 1);
        double[] want = attentionRef(batch, heads, kvHeads, hd, tq, tk, past, d(q), a, 0, d(k), d(v), kvw, cap * kvw, 0, 0, mask, scale, null);
        bothWays(() -> {
            try (Arena ar = Arena.ofShared()) {
                MemorySegment qs = seg(ar, q), ks = seg(ar, k), vs = seg(ar, v), probs = ar.allocate(4L * batch * heads * tq * tk);
                MemorySegment out = ar.allocate(4L * batch * tq * a);
                DecoderOps.AttentionShape shape = new DecoderOps.AttentionShape(batch, heads, kvHeads, hd, tq, tk, past, qs, a, 0, ks, vs, kvw, cap * kvw, 0, 0,
                    mask, scale);
                DecoderOps.attentionScores(shape, probs);
                DecoderOps.attentionValues(shape, probs, out, a);
                forward("attention with a cache offset", read(out, batch * tq * a), want);
            }
        });
    }

    // ---- MLP activations

    private static double[] geluRef(double[] x) {
        double[] out = new double[x.length];
        for (int i = 0; i < x.length; i++) out[i] = 0.5 * x[i] * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x[i] + 0.044715 * x[i] * x[i] * x[i])));
        return out;
    }

    /** silu(gate) up from gateUp [n, 2f]. */
    private static double[] swigluRef(double[] gateUp, int n, int f) {
        double[] out = new double[n * f];
        for (int r = 0; r < n; r++) {
            for (int j = 0; j < f; j++) {
                double gate = gateUp[r * 2 * f + j];
                out[r * f + j] = gate / (1 + Math.exp(-gate)) * gateUp[r * 2 * f + f + j];
            }
        }
        return out;
    }

    @Test
    void geluTanh() {
        int n = 48;
        float[] x = randn(n, 2), g = randn(n, 1);
        x[0] = 0;
        x[1] = -9; // tanh saturated
        x[2] = 7;
        double[][] in = {d(x)};
        double[] gd = d(g);
        double[] numX = numericGradient("gelu dx", in, 0, t -> dot(geluRef(t[0]), gd));
        bothWays(() -> {
            try (Arena a = Arena.ofShared()) {
                MemorySegment out = a.allocate(4L * n), dx = a.allocate(4L * n);
                DecoderOps.geluForward(out, seg(a, x), n);
                forward("gelu_tanh", read(out, n), geluRef(in[0]));
                DecoderOps.geluBackward(dx, seg(a, g), seg(a, x), n);
                backward("gelu_tanh dx", read(dx, n), numX);
            }
        });
    }

    @Test
    void swiglu() {
        int n = 4, f = 6;
        float[] gateUp = randn(n * 2 * f, 2), g = randn(n * f, 1);
        gateUp[0] = -12; // sigmoid near 0
        double[][] in = {d(gateUp)};
        double[] gd = d(g);
        double[] num = numericGradient("swiglu d(gate | up)", in, 0, t -> dot(swigluRef(t[0], n, f), gd));
        bothWays(() -> {
            try (Arena a = Arena.ofShared()) {
                MemorySegment out = a.allocate(4L * n * f), dgu = a.allocate(4L * n * 2 * f);
                DecoderOps.swigluForward(out, seg(a, gateUp), n, f);
                forward("swiglu", read(out, n * f), swigluRef(in[0], n, f));
                DecoderOps.swigluBackward(dgu, seg(a, g), seg(a, gateUp), n, f);
                backward("swiglu d(gate | up)", read(dgu, n * 2 * f), num);
            }
        });
    }

    // ---- projections

    /** y[r, col + o] = sum_i x[r, i] W + b[o] into [n, ldOut] (other columns 0): W [out, in] (nn.Linear) or [in, out] (Conv1D). */
    private static double[] projectionRef(double[] x, int ldX, double[] w, double[] b, int n, int in, int out, boolean storedInOut, int col, int ldOut) {
        double[] y = new double[n * ldOut];
        for (int r = 0; r < n; r++) {
            for (int o = 0; o < out; o++) {
                double s = b == null ? 0 : b[o];
                for (int i = 0; i < in; i++) s += x[r * ldX + i] * (storedInOut ? w[i * out + o] : w[o * in + i]);
                y[r * ldOut + col + o] = s;
            }
        }
        return y;
    }

    /**
     * Two projections of one input side by side in one output buffer (as q | k | v or gate | up),
     * each with its bias, for both weight layouts; the input has a leading dimension wider than
     * its row; dx is the first's (=) plus the second's (+=).
     */
    @Test
    void projectionsBothLayoutsIntoColumns() {
        int n = 7, in = 6, ldX = 9, out1 = 5, out2 = 3, ldOut = out1 + out2 + 2;
        for (boolean storedInOut : new boolean[] {false, true}) {
            String what = "projection " + (storedInOut ? "[in, out] (Conv1D)" : "[out, in] (Linear)");
            float[] x = randn(n * ldX, 1), w1 = randn(in * out1, 1), b1 = randn(out1, 1), w2 = randn(in * out2, 1), b2 = randn(out2, 1);
            float[] g = randn(n * ldOut, 1), dw10 = eighths(in * out1), db10 = eighths(out1), dw20 = eighths(in * out2), db20 = eighths(out2);
            for (int r = 0; r < n; r++) for (int i = in; i < ldX; i++) x[r * ldX + i] = Float.NaN; // padding past the row: must not be read
            double[][] inputs = {d(x), d(w1), d(b1), d(w2), d(b2)};
            for (int r = 0; r < n; r++) for (int i = in; i < ldX; i++) inputs[0][r * ldX + i] = 0;
            double[] gd = d(g);
            for (int r = 0; r < n; r++) for (int j = out1 + out2; j < ldOut; j++) gd[r * ldOut + j] = 0;
            ToDoubleFunction<double[][]> loss = t -> dot(projectionRef(t[0], ldX, t[1], t[2], n, in, out1, storedInOut, 0, ldOut), gd)
                + dot(projectionRef(t[0], ldX, t[3], t[4], n, in, out2, storedInOut, out1, ldOut), gd);
            double[] numX = numericGradient(what + " dx", inputs, 0, loss), numW1 = numericGradient(what + " dW", inputs, 1, loss);
            double[] numB1 = numericGradient(what + " db", inputs, 2, loss), numW2 = numericGradient(what + " dW (second)", inputs, 3, loss);
            double[] numB2 = numericGradient(what + " db (second)", inputs, 4, loss);
            bothWays(() -> {
                try (Arena a = Arena.ofShared()) {
                    MemorySegment xs = seg(a, x), ws1 = seg(a, w1), ws2 = seg(a, w2), y = a.allocate(4L * n * ldOut), gs = seg(a, d2f(gd));
                    DecoderOps.projectionForward(y, 0, ldOut, xs, ldX, ws1, seg(a, b1), n, in, out1, storedInOut);
                    DecoderOps.projectionForward(y, out1, ldOut, xs, ldX, ws2, seg(a, b2), n, in, out2, storedInOut);
                    double[] want = projectionRef(inputs[0], ldX, inputs[1], inputs[2], n, in, out1, storedInOut, 0, ldOut);
                    double[] want2 = projectionRef(inputs[0], ldX, inputs[3], inputs[4], n, in, out2, storedInOut, out1, ldOut);
                    for (int i = 0; i < want.length; i++) want[i] += want2[i];
                    forward(what, read(y, n * ldOut), want);
                    MemorySegment dx = a.allocate(4L * n * in), dw1 = seg(a, dw10), db1 = seg(a, db10), dw2 = seg(a, dw20), db2 = seg(a, db20);
                    DecoderOps.projectionBackward(dx, in, false, dw1, db1, gs, 0, ldOut, xs, ldX, ws1, n, in, out1, storedInOut);
                    DecoderOps.projectionBackward(dx, in, true, dw2, db2, gs, out1, ldOut, xs, ldX, ws2, n, in, out2, storedInOut);
                    float[] gotX = read(dx, n * in);
                    double[] wantX = new double[n * in];
                    for (int r = 0; r < n; r++) for (int i = 0; i < in; i++) wantX[r * in + i] = numX[r * ldX + i];
                    backward(what + " dx (= then +=)", gotX, wantX);
                    backward(what + " dW", increment(dw1, dw10), numW1);
                    backward(what + " db", increment(db1, db10), numB1);
                    backward(what + " dW (second)", increment(dw2, dw20), numW2);
                    backward(what + " db (second)", increment(db2, db20), numB2);
                }
            });
        }
    }

    // ---- loss

    /** transformers' causal-LM loss in double: mean over counted positions of lse(logits[b, t]) - logits[b, t, labels[b, t + 1]]. */
    private static double crossEntropyRef(double[] logits, long[] labels, int batch, int t, int v) {
        double total = 0;
        int count = 0;
        for (int b = 0; b < batch; b++) {
            for (int i = 0; i + 1 < t; i++) {
                long label = labels[b * t + i + 1];
                if (label == -100) continue;
                int row = (b * t + i) * v;
                double max = Double.NEGATIVE_INFINITY, sum = 0;
                for (int c = 0; c < v; c++) max = Math.max(max, logits[row + c]);
                for (int c = 0; c < v; c++) sum += Math.exp(logits[row + c] - max);
                total += max + Math.log(sum) - logits[row + (int) label];
                count++;
            }
        }
        return count == 0 ? Double.NaN : total / count;
    }

    @Test
    void nextTokenCrossEntropy() {
        int batch = 2, t = 4, v = 9;
        long[] labels = {1, 4, 8, 0, 2, -100, 5, 7};
        float[] logits = randn(batch * t * v, 3);
        double[][] in = {d(logits)};
        double[] num = numericGradient("cross-entropy dlogits", in, 0, x -> crossEntropyRef(x[0], labels, batch, t, v));
        double want = crossEntropyRef(in[0], labels, batch, t, v);
        bothWays(() -> {
            try (Arena a = Arena.ofShared()) {
                MemorySegment ls = seg(a, logits), dl = a.allocate(4L * batch * t * v);
                double loss = DecoderOps.nextTokenCrossEntropy(ls, labels, batch, t, v, dl);
                forward("cross-entropy loss", new float[] {(float) loss}, new double[] {want});
                backward("cross-entropy dlogits", read(dl, batch * t * v), num);
                // In place (dlogits = logits): the same loss and the same gradient, bit for bit.
                MemorySegment inPlace = seg(a, logits);
                double inPlaceLoss = DecoderOps.nextTokenCrossEntropy(inPlace, labels, batch, t, v, inPlace);
                assertTrue(inPlaceLoss == loss, "seed " + seed + ": in-place loss " + inPlaceLoss + " != " + loss);
                assertEquals(-1, inPlace.mismatch(dl), "seed " + seed + ": in-place dlogits differ");
                // Nothing counted: NaN, as PyTorch's mean over no elements, and a zero gradient.
                long[] none = {1, -100, -100, -100, 2, -100, -100, -100};
                assertTrue(Double.isNaN(DecoderOps.nextTokenCrossEntropy(ls, none, batch, t, v, dl)), "no counted label gives NaN");
                for (float x : read(dl, batch * t * v)) assertEquals(0f, x);
            }
        });
    }
}
