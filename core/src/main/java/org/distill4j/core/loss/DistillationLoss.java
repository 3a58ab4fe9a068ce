package org.distill4j.core.loss;

/**
 * The fused distillation loss's settings:
 * L = alpha T^2 D(p_t, p_s) + (1 - alpha) CE(s, y), p = softmax(logits / T), summed over counted
 * rows and divided by the normalizer (docs/distillation-loss.md has the derivation).
 *
 * @param temperature T > 0 (0.1 to 100 is the tested range)
 * @param alpha       weight of the soft term in [0, 1]; must be 1 when there are no labels
 * @param beta        JSD's mixture weight in [0, 1] (ignored by the other divergences)
 * @param ignoreIndex label value of rows that count for neither term (PyTorch's -100)
 */
public record DistillationLoss(Divergence divergence, float temperature, float alpha, float beta, long ignoreIndex) {
    public DistillationLoss {
        if (divergence == null) throw new IllegalArgumentException("distillation loss: divergence is required");
        if (!(temperature > 0) || Float.isInfinite(temperature)) {
            throw new IllegalArgumentException("distillation loss: temperature must be a finite number > 0, got " + temperature);
        }
        if (!(alpha >= 0 && alpha <= 1)) throw new IllegalArgumentException("distillation loss: alpha must be in [0, 1], got " + alpha);
        if (!(beta >= 0 && beta <= 1)) throw new IllegalArgumentException("distillation loss: beta must be in [0, 1], got " + beta);
    }

    /** Hinton's loss: forward KL, the given temperature and alpha, ignore_index -100. */
    public static DistillationLoss hinton(float temperature, float alpha) {
        return new DistillationLoss(Divergence.KL, temperature, alpha, 0.5f, -100);
    }

    /**
     * The divergence actually computed: JSD at exactly beta = 0 is forward KL and at beta = 1 reverse
     * KL (TRL's definition; the mixture formula degenerates to 0 there).
     */
    public Divergence effectiveDivergence() {
        if (divergence == Divergence.JSD && beta == 0f) return Divergence.KL;
        if (divergence == Divergence.JSD && beta == 1f) return Divergence.REVERSE_KL;
        return divergence;
    }

    /**
     * Refuses a top-k teacher (one with -inf at the classes not kept) for a divergence not defined
     * on it: only KL and JSD with beta < 1 are (reverse KL is infinite where the teacher has no
     * mass; MSE needs every logit). {@code option} names what asked for one, for the message.
     */
    public void requireTopKTeacherSupport(String option) {
        Divergence d = effectiveDivergence();
        if (d != Divergence.KL && d != Divergence.JSD) {
            throw new IllegalArgumentException(option + ": a top-k teacher needs --divergence kl, or jsd with beta < 1 (got " + divergence.cliName()
                + (divergence == Divergence.JSD ? " with beta " + beta : "") + "): the classes not kept have no teacher mass, so reverse KL is infinite "
                + "and MSE has no logits to compare");
        }
    }
}
