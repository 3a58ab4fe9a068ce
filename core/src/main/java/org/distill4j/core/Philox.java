package org.distill4j.core;

/**
 * Philox4x32-10 (Salmon et al., SC'11), the counter-based generator cuRAND and PyTorch use: the
 * i-th random number of a stream is a pure function of (seed, i), so the CPU and our CUDA kernels
 * (native/src/main/cuda/philox.cuh, the same arithmetic) produce the same numbers for the same seed,
 * in any order and on any number of threads.
 *
 * <p>Element i uses word i % 4 of the block for counter (i / 4 low, i / 4 high, 0, 0), key = seed.
 */
public final class Philox {
    private static final long M0 = 0xD2511F53L, M1 = 0xCD9E8D57L;
    private static final int W0 = 0x9E3779B9, W1 = 0xBB67AE85;

    private Philox() {}

    /** The 32-bit random word for element {@code index} of stream {@code seed}. */
    public static int word(long seed, long index) {
        long block = index >>> 2;
        int c0 = (int) block, c1 = (int) (block >>> 32), c2 = 0, c3 = 0;
        int k0 = (int) seed, k1 = (int) (seed >>> 32);
        for (int round = 0; round < 10; round++) {
            long p0 = M0 * (c0 & 0xffffffffL);
            long p1 = M1 * (c2 & 0xffffffffL);
            int hi0 = (int) (p0 >>> 32), lo0 = (int) p0;
            int hi1 = (int) (p1 >>> 32), lo1 = (int) p1;
            c0 = hi1 ^ c1 ^ k0;
            c1 = lo1;
            c2 = hi0 ^ c3 ^ k1;
            c3 = lo0;
            k0 += W0;
            k1 += W1;
        }
        return switch ((int) (index & 3)) {
            case 0 -> c0;
            case 1 -> c1;
            case 2 -> c2;
            default -> c3;
        };
    }

    /** Uniform in [0, 1) with 24 random bits (exactly representable as float). */
    public static float uniform(long seed, long index) {
        return (word(seed, index) >>> 8) * 0x1.0p-24f;
    }
}
