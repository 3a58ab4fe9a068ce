package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.distill4j.core.Bf16;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The bf16 packed linear layer (issue 23: a frozen model-spec teacher's and a bf16 Predictor's
 * linear layers) against a float64 oracle of the recipe: x and W rounded to bf16 (nearest even,
 * {@link Bf16#fromFloat}), products summed in double, + b. Random and odd shapes, one row and
 * many, with and without bias. The float32 sums may differ from the double ones by rounding only
 * (1e-5 of the terms' magnitude), far below what a float32 product or a truncating rounding of x
 * or W would change, which the test also checks it would notice. Seeded:
 * -Ddistill4j.test.seed=N replays a run.
 */
class OnednnPackedMatmulBf16Test {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    @BeforeAll
    static void needsOnednn() {
        Assumptions.assumeTrue(Onednn.available(), "oneDNN not available here: " + Onednn.unavailableReason());
    }

    private static float[] gaussian(Random r, long n) {
        float[] v = new float[(int) n];
        for (int i = 0; i < v.length; i++) v[i] = (float) r.nextGaussian();
        return v;
    }

    private static double bf16(float v) {
        return Bf16.toFloat(Bf16.fromFloat(v));
    }

    /** Truncation toward zero to bf16: what a wrong rounding would give (the test must tell it apart). */
    private static double bf16Truncated(float v) {
        return Float.intBitsToFloat(Float.floatToRawIntBits(v) & 0xffff0000);
    }

    @Test
    void matchesTheBf16RecipeOnRandomShapes() {
        System.out.println("OnednnPackedMatmulBf16Test.matchesTheBf16RecipeOnRandomShapes seed " + seed);
        Random r = new Random(seed);
        List<int[]> shapes = new ArrayList<>(List.of(new int[] {800, 784, 32}, new int[] {1023, 517, 9}, new int[] {10, 800, 200},
            new int[] {3, 7, 5}, new int[] {1, 1, 1}, new int[] {5, 33, 1}));
        for (int i = 0; i < 5; i++) shapes.add(new int[] {1 + r.nextInt(700), 1 + r.nextInt(700), 1 + r.nextInt(40)});
        for (int[] shape : shapes) {
            int n = shape[0], k = shape[1], maxRows = shape[2];
            boolean withBias = r.nextInt(4) != 0;
            float[] w = gaussian(r, (long) n * k), b = withBias ? gaussian(r, n) : null;
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment ws = arena.allocateFrom(JAVA_FLOAT, w), bs = withBias ? arena.allocateFrom(JAVA_FLOAT, b) : null;
                try (OnednnPackedMatmul p = new OnednnPackedMatmul(ws, bs, n, k, maxRows, r.nextBoolean(), true); OnednnPackedMatmul.Context ctx = p.newContext()) {
                    assertTrue(p.bf16());
                    assertEquals(1, p.minPackedRows(), "bf16 runs every row count on the packed weights");
                    List<Integer> rowCounts = new ArrayList<>(List.of(1, maxRows, 1 + r.nextInt(maxRows)));
                    for (int rows : rowCounts) {
                        String where = "seed " + seed + ", n " + n + " k " + k + " rows " + rows + (withBias ? " with bias" : "") + " (" + p.implementation() + ")";
                        float[] x = gaussian(r, (long) rows * k);
                        MemorySegment xs = arena.allocateFrom(JAVA_FLOAT, x), ys = arena.allocate((long) rows * n * Float.BYTES, 64);
                        p.run(ctx, xs, ys, rows);
                        float[] y = ys.toArray(JAVA_FLOAT);
                        double worstF32 = 0, worstTruncated = 0, worstTolerance = Double.MAX_VALUE;
                        for (int i = 0; i < rows; i++) {
                            for (int j = 0; j < n; j++) {
                                double sum = b == null ? 0 : b[j], mag = b == null ? 0 : Math.abs(b[j]);
                                double f32 = sum, truncated = sum;
                                for (int q = 0; q < k; q++) {
                                    float xv = x[i * k + q], wv = w[j * k + q];
                                    double t = bf16(xv) * bf16(wv);
                                    sum += t;
                                    mag += Math.abs(t);
                                    f32 += (double) xv * wv;
                                    truncated += bf16Truncated(xv) * bf16Truncated(wv);
                                }
                                float got = y[i * n + j];
                                double tolerance = 1e-5 * mag + 1e-6;
                                assertTrue(Math.abs(got - sum) <= tolerance, where + ": y[" + i + "," + j + "] = " + got + ", the bf16 recipe in float64 says " + sum);
                                worstF32 = Math.max(worstF32, Math.abs(got - f32) / tolerance);
                                worstTruncated = Math.max(worstTruncated, Math.abs(got - truncated) / tolerance);
                                worstTolerance = Math.min(worstTolerance, tolerance);
                            }
                        }
                        // Beyond a few products, float32 inputs or truncated rounding land outside the tolerance somewhere:
                        // the check above can tell the recipe from either.
                        if ((long) rows * n * k >= 64) {
                            assertTrue(worstF32 > 1, where + ": no output differs from float32 products by more than the tolerance");
                            assertTrue(worstTruncated > 1, where + ": no output differs from truncated bf16 by more than the tolerance");
                        }
                    }
                }
            }
        }
    }

    /** A plain float32 packed matmul keeps its float32 numbers: the bf16 option changes nothing for it. */
    @Test
    void float32PackingIsUnchanged() {
        Random r = new Random(seed);
        int n = 64, k = 96, rows = 8;
        float[] w = gaussian(r, (long) n * k), x = gaussian(r, (long) rows * k);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment ws = arena.allocateFrom(JAVA_FLOAT, w), xs = arena.allocateFrom(JAVA_FLOAT, x);
            MemorySegment a = arena.allocate((long) rows * n * Float.BYTES), b = arena.allocate((long) rows * n * Float.BYTES);
            try (OnednnPackedMatmul plain = new OnednnPackedMatmul(ws, null, n, k, rows, true); OnednnPackedMatmul.Context ca = plain.newContext();
                 OnednnPackedMatmul explicit = new OnednnPackedMatmul(ws, null, n, k, rows, true, false); OnednnPackedMatmul.Context cb = explicit.newContext()) {
                assertTrue(!plain.bf16() && !explicit.bf16());
                plain.run(ca, xs, a, rows);
                explicit.run(cb, xs, b, rows);
                assertEquals(-1, a.mismatch(b), "seed " + seed);
            }
        }
    }
}
