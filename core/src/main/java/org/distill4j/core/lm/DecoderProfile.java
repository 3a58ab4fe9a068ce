package org.distill4j.core.lm;

import java.io.PrintWriter;
import java.util.Locale;

/**
 * Wall time spent in each of {@link DecoderModel}'s ops, summed over the forwards and backwards
 * since {@link #reset}: what {@code distill bench lm-step --profile} prints, to see where a
 * training step's time goes. Off by default; when off, {@link #start} and {@link #stop} cost a
 * static read. Process-wide (one model profiled at a time).
 */
public final class DecoderProfile {
    /** The ops, forward (f) and backward (b). */
    public enum Op {
        EMBEDDING_F, NORM_F, QKV_PROJ_F, ROPE_QKNORM_F, ATTN_SCORES_SOFTMAX_F, ATTN_VALUES_F, ATTN_OUT_PROJ_F, RESIDUAL_F, MLP_IN_PROJ_F, ACTIVATION_F,
        MLP_OUT_PROJ_F, LM_HEAD_F, LOSS, LM_HEAD_B, NORM_B, MLP_OUT_PROJ_B, ACTIVATION_B, MLP_IN_PROJ_B, ATTN_OUT_PROJ_B, ATTENTION_B, ROPE_QKNORM_B,
        QKV_PROJ_B, RESIDUAL_B, EMBEDDING_B
    }

    /**
     * The parts of one {@link LmTrainer#step} (nested in none of each other; the ops above run inside
     * them): what {@code distill bench lm-kd-step --profile} prints beside the op table.
     */
    public enum Phase {
        TEACHER_FORWARD, STUDENT_FORWARD, LOSS_STUDENT_HEAD_F, LOSS_TEACHER_HEAD_F, LOSS_FUSED, LOSS_HEAD_B, STUDENT_BACKWARD, CLIP, OPTIMIZER, ZERO_GRAD
    }

    private static volatile boolean enabled;
    private static final long[] NANOS = new long[Op.values().length];
    private static final long[] PHASE_NANOS = new long[Phase.values().length];

    private DecoderProfile() {}

    /** Clears the sums and turns timing on or off. */
    public static synchronized void reset(boolean on) {
        java.util.Arrays.fill(NANOS, 0);
        java.util.Arrays.fill(PHASE_NANOS, 0);
        enabled = on;
    }

    static long start() {
        return enabled ? System.nanoTime() : 0;
    }

    static void stop(Op op, long t0) {
        if (enabled) {
            long dt = System.nanoTime() - t0;
            synchronized (NANOS) {
                NANOS[op.ordinal()] += dt;
            }
        }
    }

    static void stop(Phase phase, long t0) {
        if (enabled) {
            long dt = System.nanoTime() - t0;
            synchronized (PHASE_NANOS) {
                PHASE_NANOS[phase.ordinal()] += dt;
            }
        }
    }

    /**
     * Each phase's total in ms and its share of {@code wallNanos} (the timed steps' wall time, so
     * the rest, "other", is what no phase covers: batching, arenas, the step's bookkeeping).
     */
    public static synchronized void printPhases(PrintWriter out, long wallNanos) {
        long covered = 0;
        out.printf(Locale.ROOT, "phases (all timed steps, %.1f ms wall):%n", wallNanos / 1e6);
        for (Phase p : Phase.values()) {
            long v = PHASE_NANOS[p.ordinal()];
            covered += v;
            out.printf(Locale.ROOT, "  %-22s %10.1f ms %5.1f%%%n", p.name().toLowerCase(Locale.ROOT), v / 1e6, 100.0 * v / wallNanos);
        }
        out.printf(Locale.ROOT, "  %-22s %10.1f ms %5.1f%%%n", "other", (wallNanos - covered) / 1e6, 100.0 * (wallNanos - covered) / wallNanos);
    }

    /** Each op's total in ms and its share of the sum, largest first. */
    public static synchronized void print(PrintWriter out) {
        long total = 0;
        for (long v : NANOS) total += v;
        Integer[] order = new Integer[NANOS.length];
        for (int i = 0; i < order.length; i++) order[i] = i;
        java.util.Arrays.sort(order, (x, y) -> Long.compare(NANOS[y], NANOS[x]));
        out.printf(Locale.ROOT, "profile (all timed steps, %.1f ms in ops):%n", total / 1e6);
        for (int i : order) {
            if (NANOS[i] == 0) continue;
            out.printf(Locale.ROOT, "  %-22s %10.1f ms %5.1f%%%n", Op.values()[i].name().toLowerCase(Locale.ROOT), NANOS[i] / 1e6, 100.0 * NANOS[i] / total);
        }
    }
}
