package org.distill4j.core.train;

/**
 * How to train: optimizer and its settings, learning-rate schedule, batches, epochs, seed.
 *
 * @param schedule      constant, cosine (to 0 over all steps) or step (x0.1 at 50% and 75% of the steps)
 * @param warmupSteps   linear warm-up from 0 over this many steps (0: none)
 * @param evalEvery     evaluate on the test set every this many epochs (1: every epoch)
 * @param logEvery      read the loss back (the one host synchronisation) every this many steps
 * @param accumulation  micro-batches of {@code batchSize} per optimizer step (1: none); the loss is
 *                      normalised by the rows of the whole group, so the update equals one big batch's
 * @param clipNorm      clip the global gradient norm to this (0: off; costs one host read per step)
 */
public record TrainingConfig(Optimizer optimizer, float lr, float momentum, boolean nesterov, float weightDecay, Schedule schedule,
                             int warmupSteps, int epochs, int batchSize, long seed, int evalEvery, int logEvery, int accumulation, float clipNorm) {
    public enum Optimizer { SGD, ADAMW }

    public enum Schedule { CONSTANT, COSINE, STEP }

    /** AdamW with a cosine schedule, no accumulation or clipping: a sensible default. */
    public static TrainingConfig adamw(float lr, int epochs, int batchSize, long seed) {
        return new TrainingConfig(Optimizer.ADAMW, lr, 0f, false, 1e-4f, Schedule.COSINE, 0, epochs, batchSize, seed, 1, 10, 1, 0f);
    }

    public TrainingConfig {
        if (!(lr > 0)) throw new IllegalArgumentException("learning rate must be > 0, got " + lr);
        if (epochs < 1) throw new IllegalArgumentException("epochs must be >= 1, got " + epochs);
        if (batchSize < 1) throw new IllegalArgumentException("batch size must be >= 1, got " + batchSize);
        if (warmupSteps < 0) throw new IllegalArgumentException("warm-up steps must be >= 0, got " + warmupSteps);
        if (momentum < 0 || momentum >= 1) throw new IllegalArgumentException("momentum must be in [0, 1), got " + momentum);
        if (weightDecay < 0) throw new IllegalArgumentException("weight decay must be >= 0, got " + weightDecay);
        if (evalEvery < 1 || logEvery < 1) throw new IllegalArgumentException("evalEvery and logEvery must be >= 1");
        if (accumulation < 1) throw new IllegalArgumentException("gradient accumulation must be >= 1 micro-batch, got " + accumulation);
        if (!(clipNorm >= 0)) throw new IllegalArgumentException("clip norm must be >= 0 (0: off), got " + clipNorm);
    }

    /** Learning rate at step {@code step} (0-based) of {@code total}. */
    public float lrAt(long step, long total) {
        double scale = switch (schedule) {
            case CONSTANT -> 1;
            case COSINE -> 0.5 * (1 + Math.cos(Math.PI * Math.min(1.0, step / (double) Math.max(1, total))));
            case STEP -> step < total / 2 ? 1 : step < total * 3 / 4 ? 0.1 : 0.01;
        };
        if (warmupSteps > 0 && step < warmupSteps) scale *= (step + 1) / (double) warmupSteps;
        return (float) (lr * scale);
    }
}
