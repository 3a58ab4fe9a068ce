package org.distill4j.core;

/** Optimizer hyper-parameters, with PyTorch's semantics (torch.optim.SGD, torch.optim.AdamW). */
public final class Optimizers {
    private Optimizers() {}

    /**
     * SGD: g = grad + weightDecay * p; with momentum, buf = g on the first step, then
     * buf = momentum * buf + (1 - dampening) * g; g = nesterov ? g + momentum * buf : buf; p -= lr * g.
     */
    public record Sgd(float lr, float momentum, float dampening, boolean nesterov, float weightDecay) {
        public Sgd {
            if (nesterov && (momentum <= 0 || dampening != 0)) {
                throw new IllegalArgumentException("SGD: Nesterov momentum requires momentum > 0 and dampening = 0");
            }
        }
    }

    /**
     * AdamW: p *= 1 - lr * weightDecay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
     * p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
     */
    public record AdamW(float lr, float beta1, float beta2, float eps, float weightDecay) {
        public static AdamW defaults(float lr) {
            return new AdamW(lr, 0.9f, 0.999f, 1e-8f, 0.01f);
        }
    }
}
