package org.distill4j.core;

/** bfloat16 <-> float32 conversions, shared by the CPU backend, the teacher cache and tests. */
public final class Bf16 {
    private Bf16() {}

    /** float32 -> bfloat16 bits, round to nearest even (NaN stays NaN), as CUDA's __float2bfloat16_rn. */
    public static short fromFloat(float f) {
        int bits = Float.floatToRawIntBits(f);
        if (Float.isNaN(f)) return (short) 0x7fc0;
        int rounding = 0x7fff + ((bits >>> 16) & 1);
        return (short) ((bits + rounding) >>> 16);
    }

    /** bfloat16 bits -> float32, exact. */
    public static float toFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xffff) << 16);
    }
}
