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

        /** The per-step values read from the device by Backend.sgdStep(config, scalars, ...): [lr, step == 1 ? 1 : 0, 0, 0]. */
        public float[] scalars(long step) {
            if (step < 1) throw new IllegalArgumentException("sgdStep: step counts from 1, got " + step);
            return new float[] {lr, step == 1 ? 1f : 0f, 0f, 0f};
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

        /**
         * The per-step values read from the device by Backend.adamwStep(config, scalars, ...):
         * [lr, 1 - lr * weightDecay, 1 - beta1^step, 1 - beta2^step], rounded to float once here so
         * that every backend and every replay uses the same numbers.
         */
        public float[] scalars(long step) {
            if (step < 1) throw new IllegalArgumentException("adamwStep: step counts from 1, got " + step);
            return new float[] {lr, 1 - lr * weightDecay, (float) (1 - Math.pow(beta1, step)), (float) (1 - Math.pow(beta2, step))};
        }
    }
}
