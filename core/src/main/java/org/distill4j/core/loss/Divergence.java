package org.distill4j.core.loss;

import java.util.Locale;

/** The soft term D(p_t, p_s) of the distillation loss (docs/distillation-loss.md). */
public enum Divergence {
    /** KL(p_t || p_s): Hinton et al. 2015. */
    KL("kl"),
    /** KL(p_s || p_t): mode-seeking. */
    REVERSE_KL("reverse-kl"),
    /** Generalised Jensen-Shannon with mixture M = beta p_t + (1 - beta) p_s (beta = 0: KL, beta = 1: reverse KL, as TRL). */
    JSD("jsd"),
    /** Mean squared difference of the logits (temperature cancels: alpha T^2 mean(((s - t)/T)^2) = alpha mean((s - t)^2)). */
    MSE("mse");

    private final String cliName;

    Divergence(String cliName) {
        this.cliName = cliName;
    }

    public String cliName() {
        return cliName;
    }

    /** Parses kl | reverse-kl | jsd | mse. */
    public static Divergence parse(String name) {
        for (Divergence d : values()) if (d.cliName.equals(name.toLowerCase(Locale.ROOT))) return d;
        throw new IllegalArgumentException("unknown divergence '" + name + "': expected kl, reverse-kl, jsd or mse");
    }
}
