package org.distill4j.cli;

import java.io.PrintWriter;
import org.distill4j.core.train.Trainer;

/**
 * A one-line progress bar redrawn in place on a terminal (epoch, step, loss, samples/s, ETA), at
 * most five times a second. When the output is not a terminal it draws nothing: the per-epoch
 * lines are the plain periodic output.
 */
final class ProgressLine {
    private final PrintWriter out;
    private final boolean enabled;
    private long lastDraw;
    private int width;

    private ProgressLine(PrintWriter out, boolean enabled) {
        this.out = out;
        this.enabled = enabled;
    }

    static ProgressLine forTerminal(PrintWriter out) {
        java.io.Console c = System.console();
        return new ProgressLine(out, c != null && c.isTerminal());
    }

    void update(Trainer.Progress p) {
        if (!enabled) return;
        long now = System.nanoTime();
        if (now - lastDraw < 200_000_000L && p.stepInEpoch() < p.stepsPerEpoch()) return;
        lastDraw = now;
        int cells = 24, filled = (int) (cells * p.stepInEpoch() / Math.max(1, p.stepsPerEpoch()));
        double remaining = p.step() == 0 ? 0 : p.seconds() / p.step() * (p.totalSteps() - p.step());
        String line = String.format("epoch %d/%d [%s%s] %d/%d  loss %s  %,.0f samples/s  ETA %s", p.epoch(), p.epochs(), "#".repeat(filled),
            "-".repeat(cells - filled), p.stepInEpoch(), p.stepsPerEpoch(), Double.isNaN(p.loss()) ? "-" : String.format("%.4f", p.loss()),
            p.samplesPerSecond(), duration(remaining));
        out.print("\r" + line + " ".repeat(Math.max(0, width - line.length())));
        out.flush();
        width = line.length();
    }

    /** Draws a free-form line (distill tokenize's files, tokens and tokens/s), at most five times a second unless {@code force}. */
    void show(String line, boolean force) {
        if (!enabled) return;
        long now = System.nanoTime();
        if (!force && now - lastDraw < 200_000_000L) return;
        lastDraw = now;
        out.print("\r" + line + " ".repeat(Math.max(0, width - line.length())));
        out.flush();
        width = line.length();
    }

    /** A bar of {@code cells} cells, {@code done} of {@code total} filled: [#####-----]. */
    static String bar(long done, long total, int cells) {
        int filled = (int) (cells * Math.min(done, total) / Math.max(1, total));
        return "[" + "#".repeat(filled) + "-".repeat(cells - filled) + "]";
    }

    /** Clears the bar before a regular line is printed. */
    void clear() {
        if (!enabled || width == 0) return;
        out.print("\r" + " ".repeat(width) + "\r");
        out.flush();
        width = 0;
    }

    private static String duration(double seconds) {
        long s = Math.round(seconds);
        return s >= 3600 ? String.format("%dh%02dm", s / 3600, s % 3600 / 60) : String.format("%dm%02ds", s / 60, s % 60);
    }
}
