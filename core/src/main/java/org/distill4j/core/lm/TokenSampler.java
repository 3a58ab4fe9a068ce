package org.distill4j.core.lm;

import org.distill4j.core.Philox;

/**
 * The next token from a row of logits, as transformers' generate() picks it: the argmax at
 * temperature 0 (the first maximum, as torch.argmax), else a draw from softmax(logits / T) over
 * the top-k logits (those >= the k-th largest, as TopKLogitsWarper keeps; k = 0: all). Draw n of a
 * seed uses Philox words (seed, 2n) and (seed, 2n + 1): 53 uniform bits, the same on any machine.
 * Used by {@code distill generate} and by on-policy distillation's student continuations.
 */
public final class TokenSampler {
    private TokenSampler() {}

    /** The token for logits [V] (only the first {@code vocab} entries are candidates). */
    public static long choose(float[] logits, int vocab, double temperature, int topK, long seed, long n) {
        if (temperature == 0) return argmax(logits, vocab);
        double threshold = Double.NEGATIVE_INFINITY;
        if (topK > 0 && topK < vocab) {
            float[] sorted = java.util.Arrays.copyOf(logits, vocab);
            java.util.Arrays.sort(sorted);
            threshold = sorted[vocab - topK];
        }
        double max = Double.NEGATIVE_INFINITY;
        for (int i = 0; i < vocab; i++) if (logits[i] >= threshold) max = Math.max(max, logits[i] / temperature);
        double[] weights = new double[vocab];
        double total = 0;
        for (int i = 0; i < vocab; i++) {
            if (logits[i] >= threshold) total += weights[i] = Math.exp(logits[i] / temperature - max);
        }
        long hi = Integer.toUnsignedLong(Philox.word(seed, 2L * n)), lo = Integer.toUnsignedLong(Philox.word(seed, 2L * n + 1));
        double u = ((hi << 21) | (lo >>> 11)) * 0x1.0p-53 * total; // in [0, total)
        int last = -1;
        for (int i = 0; i < vocab; i++) {
            if (weights[i] == 0) continue;
            last = i;
            u -= weights[i];
            if (u < 0) return i;
        }
        return last; // rounding left u just above 0: the last candidate
    }

    /** The first maximum of logits[0, vocab). */
    public static int argmax(float[] logits, int vocab) {
        int best = 0;
        for (int i = 1; i < vocab; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
