package org.distill4j.core;

/**
 * PyTorch's default initialisations, drawn with the counter-based RNG (the same values on every
 * backend for the same seed).
 */
public final class Init {
    private Init() {}

    /**
     * kaiming_uniform_(w, a): U(-b, b) with b = gain * sqrt(3 / fanIn), gain = sqrt(2 / (1 + a^2)).
     * Linear and Conv2d use a = sqrt(5), which gives b = 1 / sqrt(fanIn).
     */
    public static void kaimingUniform(Tensor w, long fanIn, double a, long seed) {
        if (fanIn <= 0) throw new IllegalArgumentException("kaimingUniform: fan_in must be > 0, got " + fanIn);
        double gain = Math.sqrt(2.0 / (1 + a * a));
        float bound = (float) (gain * Math.sqrt(3.0 / fanIn));
        w.backend().uniform(w, -bound, bound, seed, 0);
    }

    /** torch.nn.Linear / Conv2d reset_parameters(): weight kaiming_uniform(a = sqrt(5)), bias U(-1/sqrt(fanIn), 1/sqrt(fanIn)). */
    public static void linearOrConv(Tensor weight, Tensor bias, long fanIn, long seed) {
        kaimingUniform(weight, fanIn, Math.sqrt(5), seed);
        if (bias != null) {
            float bound = (float) (1 / Math.sqrt(fanIn));
            bias.backend().uniform(bias, -bound, bound, seed ^ 0x5DEECE66DL, 0);
        }
    }
}
