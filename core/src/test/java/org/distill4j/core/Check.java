package org.distill4j.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import java.util.Random;
import java.util.function.Function;

/** Test helpers: random inputs, comparisons against float64 references, finite-difference gradients. */
public final class Check {
    private Check() {}

    public static float[] randn(Random r, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        return x;
    }

    /** |got - expected| <= rel * max(|expected|, floor) for every element. */
    public static void close(double[] expected, float[] got, double rel, double floor, String what) {
        assertEquals(expected.length, got.length, what + ": length");
        for (int i = 0; i < got.length; i++) {
            double tol = rel * Math.max(Math.abs(expected[i]), floor);
            if (!(Math.abs(got[i] - expected[i]) <= tol) && !(Double.isNaN(expected[i]) && Float.isNaN(got[i]))) {
                fail(what + ": element " + i + " = " + got[i] + ", expected " + expected[i] + " (tolerance " + tol + ")");
            }
        }
    }

    /**
     * Central differences of loss(x) against the analytic gradient: for each element,
     * |numeric - analytic| <= rel * max(|numeric|, scale) where scale is the largest |analytic|.
     * loss is evaluated in float32 through the op, so h is large enough to beat rounding.
     */
    public static void gradient(float[] x, float[] analytic, Function<float[], Double> loss, double h, double rel, String what) {
        double scale = 1e-3;
        for (float a : analytic) scale = Math.max(scale, Math.abs(a));
        int step = Math.max(1, x.length / 64); // at most 64 probes: every element of small inputs
        for (int i = 0; i < x.length; i += step) {
            float saved = x[i];
            x[i] = (float) (saved + h);
            double up = loss.apply(x);
            x[i] = (float) (saved - h);
            double down = loss.apply(x);
            x[i] = saved;
            double numeric = (up - down) / (2 * h);
            if (Math.abs(numeric - analytic[i]) > rel * Math.max(Math.abs(numeric), scale)) {
                fail(what + ": d/dx[" + i + "] analytic " + analytic[i] + ", numeric " + numeric);
            }
        }
    }

    public static double dot(float[] a, float[] w) {
        double s = 0;
        for (int i = 0; i < a.length; i++) s += (double) a[i] * w[i];
        return s;
    }
}
