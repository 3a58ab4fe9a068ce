package org.distill4j.core.lm;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import java.util.function.DoubleSupplier;
import org.junit.jupiter.api.Test;

/**
 * Every decoder op's backward against central finite differences of its forward. The ops compute
 * in float32 (sums in double); the objective sum(out * g) with a random g and the difference
 * quotient are taken in double, with steps large enough (1e-2) that float32 rounding of the
 * outputs stays far below the tolerance.
 */
class DecoderOpsTest {
    /** Fresh inputs every run; the seed is in every failure message, and -Ddistill4j.test.seed=N replays one. */
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);

    DecoderOpsTest() {
        System.out.println("DecoderOpsTest random seed " + seed + " (fresh inputs every run; the seed reproduces a failure)");
    }

    private static final double STEP = 1e-2, TOLERANCE = 3e-3;

    private MemorySegment randn(Arena arena, long n, double scale) {
        MemorySegment s = arena.allocate(n * 4, 64);
        for (long i = 0; i < n; i++) s.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) (random.nextGaussian() * scale));
        return s;
    }

    private static MemorySegment zeros(Arena arena, long n) {
        return arena.allocate(n * 4, 64); // Arena.allocate zero-fills
    }

    private static double dot(MemorySegment a, MemorySegment b, long n) {
        double s = 0;
        for (long i = 0; i < n; i++) s += (double) a.getAtIndex(ValueLayout.JAVA_FLOAT, i) * b.getAtIndex(ValueLayout.JAVA_FLOAT, i);
        return s;
    }

    /**
     * Compares analytic[i] with (L(x + h e_i) - L(x - h e_i)) / 2h for every i (up to 200 sampled),
     * within TOLERANCE of the largest analytic entry (and of the entry itself).
     */
    private void gradient(String what, MemorySegment x, long n, MemorySegment analytic, DoubleSupplier objective) {
        double scale = 1e-6;
        for (long i = 0; i < n; i++) scale = Math.max(scale, Math.abs(analytic.getAtIndex(ValueLayout.JAVA_FLOAT, i)));
        long checks = Math.min(n, 200);
        for (long c = 0; c < checks; c++) {
            long i = n <= 200 ? c : (long) (random.nextDouble() * n);
            float old = x.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            x.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) (old + STEP));
            double plus = objective.getAsDouble();
            x.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) (old - STEP));
            double minus = objective.getAsDouble();
            x.setAtIndex(ValueLayout.JAVA_FLOAT, i, old);
            double numeric = (plus - minus) / (2 * STEP), got = analytic.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            assertTrue(Math.abs(numeric - got) <= TOLERANCE * scale + 1e-3 * Math.abs(numeric),
                what + "[" + i + "]: analytic " + got + ", finite difference " + numeric + " (max |analytic| " + scale + ", seed " + seed + ")");
        }
    }

    @Test
    void layerNorm() {
        long n = 5, d = 12;
        try (Arena a = Arena.ofShared()) {
            MemorySegment x = randn(a, n * d, 1), w = randn(a, d, 1), b = randn(a, d, 1), g = randn(a, n * d, 1);
            MemorySegment out = zeros(a, n * d), mean = zeros(a, n), rstd = zeros(a, n);
            MemorySegment dx = zeros(a, n * d), dw = zeros(a, d), db = zeros(a, d);
            DoubleSupplier loss = () -> {
                DecoderOps.layerNormForward(out, mean, rstd, x, w, b, n, d, 1e-5f);
                return dot(out, g, n * d);
            };
            loss.getAsDouble();
            DecoderOps.layerNormBackward(dx, dw, db, g, x, w, mean, rstd, n, d, false);
            gradient("layerNorm dx", x, n * d, dx, loss);
            gradient("layerNorm dw", w, d, dw, loss);
            gradient("layerNorm db", b, d, db, loss);
        }
    }

    @Test
    void rmsNormOnStridedRows() {
        long n = 6, d = 8, stride = 20; // rows of 8 inside rows of 20: Qwen3's per-head norm over the q | k | v buffer
        try (Arena a = Arena.ofShared()) {
            MemorySegment x = randn(a, n * stride, 1), w = randn(a, d, 1), g = randn(a, n * stride, 1);
            MemorySegment out = zeros(a, n * stride), rstd = zeros(a, n), dx = zeros(a, n * stride), dw = zeros(a, d);
            DoubleSupplier loss = () -> {
                DecoderOps.rmsNormForward(out, rstd, x, w, n, d, stride, 1e-6f);
                double s = 0;
                for (long r = 0; r < n; r++) for (long j = 0; j < d; j++) s += (double) DecoderOps.f(out, r * stride + j) * DecoderOps.f(g, r * stride + j);
                return s;
            };
            loss.getAsDouble();
            DecoderOps.rmsNormBackward(dx, dw, g, x, w, rstd, n, d, stride, false);
            gradient("rmsNorm dx", x, n * stride, dx, loss);
            gradient("rmsNorm dw", w, d, dw, loss);
        }
    }

    @Test
    void projectionsBothLayoutsIntoColumns() {
        long n = 7, in = 6, out = 5, ld = 13, col = 4;
        for (boolean storedInOut : new boolean[] {false, true}) {
            try (Arena a = Arena.ofShared()) {
                MemorySegment x = randn(a, n * in, 1), w = randn(a, in * out, 1), b = randn(a, out, 1), g = randn(a, n * ld, 1);
                MemorySegment y = zeros(a, n * ld), dx = zeros(a, n * in), dw = zeros(a, in * out), db = zeros(a, out);
                DoubleSupplier loss = () -> {
                    DecoderOps.projectionForward(y, col, ld, x, in, w, b, n, in, out, storedInOut);
                    double s = 0;
                    for (long r = 0; r < n; r++) for (long j = 0; j < out; j++) s += (double) DecoderOps.f(y, r * ld + col + j) * DecoderOps.f(g, r * ld + col + j);
                    return s;
                };
                loss.getAsDouble();
                DecoderOps.projectionBackward(dx, in, false, dw, db, g, col, ld, x, in, w, n, in, out, storedInOut);
                gradient("projection dx (storedInOut " + storedInOut + ")", x, n * in, dx, loss);
                gradient("projection dw (storedInOut " + storedInOut + ")", w, in * out, dw, loss);
                gradient("projection db (storedInOut " + storedInOut + ")", b, out, db, loss);
            }
        }
    }

    @Test
    void ropeBackwardIsTheInverseRotation() {
        long n = 4, heads = 3, half = 4, stride = 2 * half * heads + 5, col = 5;
        float[] inv = new DecoderConfig.Rope(10000, "default", 1, 0, 0, 0).inverseFrequencies(2 * half);
        long[] pos = {0, 3, 7, 2};
        try (Arena a = Arena.ofShared()) {
            MemorySegment x = randn(a, n * stride, 1), g = randn(a, n * stride, 1), cos = zeros(a, n * half), sin = zeros(a, n * half);
            MemorySegment work = zeros(a, n * stride), dx = zeros(a, n * stride);
            DecoderOps.ropeTables(cos, sin, pos, inv);
            DoubleSupplier loss = () -> {
                MemorySegment.copy(x, 0, work, 0, x.byteSize());
                DecoderOps.rope(work, col, stride, n, heads, cos, sin, half, false);
                return dot(work, g, n * stride);
            };
            MemorySegment.copy(g, 0, dx, 0, g.byteSize());
            DecoderOps.rope(dx, col, stride, n, heads, cos, sin, half, true); // columns outside the heads pass through unchanged
            gradient("rope dx", x, n * stride, dx, loss);
        }
    }

    /** Causal attention with grouped KV heads and a padding mask, q | k | v read in place from one buffer. */
    @Test
    void attentionWithGqaAndPadding() {
        int batch = 2, heads = 4, kvHeads = 2;
        long hd = 3, t = 5, a = heads * hd, kv = kvHeads * hd, w = a + 2 * kv;
        long[] mask = {1, 1, 1, 1, 1, 0, 0, 1, 1, 1}; // row 1 left-padded by two
        try (Arena ar = Arena.ofShared()) {
            MemorySegment qkv = randn(ar, batch * t * w, 1), g = randn(ar, batch * t * a, 1);
            MemorySegment probs = zeros(ar, (long) batch * heads * t * t), out = zeros(ar, batch * t * a);
            MemorySegment dprobs = zeros(ar, (long) batch * heads * t * t), dqkv = zeros(ar, batch * t * w);
            DecoderOps.AttentionShape shape = new DecoderOps.AttentionShape(batch, heads, kvHeads, hd, t, t, 0, qkv, w, 0, qkv, qkv, w, t * w, a, a + kv,
                mask, (float) (1 / Math.sqrt(hd)));
            DoubleSupplier loss = () -> {
                DecoderOps.attentionScores(shape, probs);
                DecoderOps.attentionValues(shape, probs, out, a);
                return dot(out, g, batch * t * a);
            };
            loss.getAsDouble();
            DecoderOps.attentionBackward(shape, probs, probs, dprobs, g, a, dqkv, () -> {});
            gradient("attention dqkv", qkv, batch * t * w, dqkv, loss);
        }
    }

    @Test
    void geluAndSwiglu() {
        long n = 4, f = 6;
        try (Arena a = Arena.ofShared()) {
            MemorySegment x = randn(a, n * f, 1.5), g = randn(a, n * f, 1), y = zeros(a, n * f), dx = zeros(a, n * f);
            DoubleSupplier gelu = () -> {
                DecoderOps.geluForward(y, x, n * f);
                return dot(y, g, n * f);
            };
            DecoderOps.geluBackward(dx, g, x, n * f);
            gradient("gelu dx", x, n * f, dx, gelu);

            MemorySegment gateUp = randn(a, n * 2 * f, 1.5), dgateUp = zeros(a, n * 2 * f);
            DoubleSupplier swiglu = () -> {
                DecoderOps.swigluForward(y, gateUp, n, f);
                return dot(y, g, n * f);
            };
            DecoderOps.swigluBackward(dgateUp, g, gateUp, n, f);
            gradient("swiglu d(gate | up)", gateUp, n * 2 * f, dgateUp, swiglu);
        }
    }

    @Test
    void embeddingsScatterTheirGradient() {
        long v = 7, p = 6, d = 5;
        long[] ids = {3, 1, 3, 6}, pos = {0, 1, 2, 0};
        try (Arena a = Arena.ofShared()) {
            MemorySegment wte = randn(a, v * d, 1), wpe = randn(a, p * d, 1), g = randn(a, ids.length * d, 1), out = zeros(a, ids.length * d);
            MemorySegment dwte = zeros(a, v * d), dwpe = zeros(a, p * d);
            DoubleSupplier loss = () -> {
                DecoderOps.embeddingForward(out, ids, pos, wte, wpe, d);
                return dot(out, g, ids.length * d);
            };
            DecoderOps.embeddingBackward(dwte, dwpe, g, ids, pos, d);
            gradient("embedding dwte (repeated id 3)", wte, v * d, dwte, loss);
            gradient("embedding dwpe", wpe, p * d, dwpe, loss);
        }
    }

    @Test
    void nextTokenCrossEntropy() {
        int batch = 2;
        long t = 4, v = 9;
        long[] labels = {1, 4, 8, 0, 2, -100, 5, 7};
        try (Arena a = Arena.ofShared()) {
            MemorySegment logits = randn(a, batch * t * v, 2), dlogits = zeros(a, batch * t * v);
            DoubleSupplier loss = () -> DecoderOps.nextTokenCrossEntropy(logits, labels, batch, t, v, null);
            DecoderOps.nextTokenCrossEntropy(logits, labels, batch, t, v, dlogits);
            gradient("next-token cross-entropy dlogits", logits, batch * t * v, dlogits, loss);
            // In place (dlogits = logits): the same loss and the same gradient, bit for bit.
            double separate = loss.getAsDouble();
            MemorySegment inPlace = zeros(a, batch * t * v);
            inPlace.copyFrom(logits);
            double inPlaceLoss = DecoderOps.nextTokenCrossEntropy(inPlace, labels, batch, t, v, inPlace);
            assertTrue(inPlaceLoss == separate, "seed " + seed + ": in-place loss " + inPlaceLoss + " != " + separate);
            assertTrue(inPlace.mismatch(dlogits) == -1, "seed " + seed + ": in-place dlogits differ at byte " + inPlace.mismatch(dlogits));
        }
    }
}
