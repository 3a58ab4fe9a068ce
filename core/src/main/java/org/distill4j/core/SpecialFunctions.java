package org.distill4j.core;

/** erf and erfc in double precision (Java has neither): GELU needs them. */
public final class SpecialFunctions {
    private SpecialFunctions() {}

    private static final double TWO_OVER_SQRT_PI = 1.1283791670955126;

    /** erf(x), absolute error below 1e-14. */
    public static double erf(double x) {
        double z = Math.abs(x);
        double r = z < 2.5 ? series(z) : 1 - erfcContinuedFraction(z);
        return x < 0 ? -r : r;
    }

    /** erfc(x) = 1 - erf(x), with full relative precision for large x. */
    public static double erfc(double x) {
        if (x < 2.5) return 1 - erf(x);
        return erfcContinuedFraction(x);
    }

    // Maclaurin series: erf(z) = 2/sqrt(pi) sum (-1)^n z^(2n+1) / (n! (2n+1)); converges to double
    // precision for z < 2.5 with mild cancellation (largest term about 10).
    private static double series(double z) {
        double z2 = z * z, term = z, sum = z;
        for (int n = 1; n < 200; n++) {
            term *= -z2 / n;
            double add = term / (2 * n + 1);
            sum += add;
            if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
        }
        return TWO_OVER_SQRT_PI * sum;
    }

    // Continued fraction erfc(z) = exp(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))),
    // evaluated bottom-up; 80 terms are far more than enough for z >= 2.5.
    private static double erfcContinuedFraction(double z) {
        double k = z;
        for (int n = 80; n >= 1; n--) k = z + (n / 2.0) / k;
        return Math.exp(-z * z) / (Math.sqrt(Math.PI) * k);
    }
}
