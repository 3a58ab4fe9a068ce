package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The packed linear layer (weights reordered once into oneDNN's layout) against a float64 oracle
 * written from the definition y = x W^T + b, on random shapes (odd sizes, one row, row counts on
 * both sides of the packed/plain boundary, with and without bias), against the plain CpuBlas path
 * bit for bit on the same row count, the snapshot rule (later writes to W and b are not seen),
 * and from several threads at once. Seeded: -Ddistill4j.test.seed=N replays a run.
 */
class OnednnPackedMatmulTest {
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

    /** Checks y [rows, n] against float64 x W^T + b: |error| <= 1e-5 of the terms' magnitude, plus a hair. */
    private static void checkAgainstOracle(String where, float[] x, float[] w, float[] b, float[] y, int rows, int n, int k) {
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < n; j++) {
                double sum = b == null ? 0 : b[j], mag = b == null ? 0 : Math.abs(b[j]);
                for (int p = 0; p < k; p++) {
                    double t = (double) x[i * k + p] * w[j * k + p];
                    sum += t;
                    mag += Math.abs(t);
                }
                float got = y[i * n + j];
                assertTrue(Math.abs(got - sum) <= 1e-5 * mag + 1e-6, where + ": y[" + i + "," + j + "] = " + got + ", float64 says " + sum);
            }
        }
    }

    @Test
    void matchesTheOracleAndThePlainPathOnRandomShapes() {
        System.out.println("OnednnPackedMatmulTest.matchesTheOracleAndThePlainPathOnRandomShapes seed " + seed);
        Random r = new Random(seed);
        // Fixed shapes that pack at every row count >= 2 (n k >= 2^19), odd ones, and random ones.
        List<int[]> shapes = new ArrayList<>(List.of(new int[] {800, 784, 32}, new int[] {1023, 517, 9}, new int[] {10, 800, 200}, new int[] {3, 7, 5}));
        for (int i = 0; i < 6; i++) shapes.add(new int[] {1 + r.nextInt(1100), 1 + r.nextInt(1100), 1 + r.nextInt(70)});
        for (int[] shape : shapes) {
            int n = shape[0], k = shape[1], maxRows = shape[2];
            boolean withBias = r.nextInt(4) != 0;
            float[] w = gaussian(r, (long) n * k), b = withBias ? gaussian(r, n) : null;
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment ws = arena.allocateFrom(JAVA_FLOAT, w), bs = withBias ? arena.allocateFrom(JAVA_FLOAT, b) : null;
                try (OnednnPackedMatmul p = new OnednnPackedMatmul(ws, bs, n, k, maxRows, r.nextBoolean()); OnednnPackedMatmul.Context ctx = p.newContext()) {
                    assertTrue(p.packedBytes() >= (long) n * k * Float.BYTES, "packed bytes " + p.packedBytes());
                    List<Integer> rowCounts = new ArrayList<>(List.of(1, maxRows, Math.max(1, maxRows / 2)));
                    if (p.minPackedRows() <= maxRows) rowCounts.add(p.minPackedRows());
                    rowCounts.add(1 + r.nextInt(maxRows));
                    for (int rows : rowCounts) {
                        String where = "seed " + seed + ", n " + n + " k " + k + " rows " + rows + (withBias ? " with bias" : "") + " (" + p.implementation()
                            + ", packed from " + p.minPackedRows() + " rows)";
                        float[] x = gaussian(r, (long) rows * k);
                        MemorySegment xs = arena.allocateFrom(JAVA_FLOAT, x), ys = arena.allocate((long) rows * n * Float.BYTES, 64);
                        p.run(ctx, xs, ys, rows);
                        float[] y = ys.toArray(JAVA_FLOAT);
                        checkAgainstOracle(where, x, w, b, y, rows, n, k);
                        // The plain path on the same row count: CpuBlas.sgemm then the bias add, as the plan ran before packing.
                        MemorySegment plain = arena.allocate((long) rows * n * Float.BYTES, 64);
                        CpuBlas.sgemm(false, true, rows, n, k, 1f, xs, k, ws, k, 0f, plain, n);
                        if (withBias) CpuKernels.biasAddRows(plain, bs, 0, rows, n);
                        // Float32 rounding of a k-term sum apart (the plain path is another engine's kernel under
                        // -Ddistill4j.cpu.engine=openblas|java; on oneDNN the same kernel, equal in our runs).
                        float[] want = plain.toArray(JAVA_FLOAT);
                        double tolerance = 4e-6 * Math.sqrt(k);
                        for (int i = 0; i < want.length; i++) {
                            assertTrue(Math.abs(want[i] - y[i]) <= tolerance * (1 + Math.abs(want[i])), where + ": element " + i + " plain " + want[i] + " packed " + y[i]);
                        }
                    }
                }
            }
        }
    }

    /** The snapshot rule: after the constructor, writing W and b changes no call, packed or plain row counts. */
    @Test
    void laterWritesToTheWeightsAreNotSeen() {
        System.out.println("OnednnPackedMatmulTest.laterWritesToTheWeightsAreNotSeen seed " + seed);
        Random r = new Random(seed);
        int n = 700, k = 900, maxRows = 16;
        float[] w = gaussian(r, (long) n * k), b = gaussian(r, n);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment ws = arena.allocateFrom(JAVA_FLOAT, w), bs = arena.allocateFrom(JAVA_FLOAT, b);
            try (OnednnPackedMatmul p = new OnednnPackedMatmul(ws, bs, n, k, maxRows, false); OnednnPackedMatmul.Context ctx = p.newContext()) {
                assertEquals(2, p.minPackedRows(), "700 x 900 packs from 2 rows");
                for (int rows : new int[] {1, 2, maxRows}) {
                    float[] x = gaussian(r, (long) rows * k);
                    MemorySegment xs = arena.allocateFrom(JAVA_FLOAT, x), before = arena.allocate((long) rows * n * Float.BYTES), after = arena.allocate((long) rows * n * Float.BYTES);
                    p.run(ctx, xs, before, rows);
                    ws.fill((byte) 0x7f); // W and b become garbage (huge floats)
                    bs.fill((byte) 0x7f);
                    p.run(ctx, xs, after, rows);
                    assertEquals(-1, before.mismatch(after), "rows " + rows + ": a write to W after packing changed the answer");
                    checkAgainstOracle("seed " + seed + " rows " + rows, x, w, b, after.toArray(JAVA_FLOAT), rows, n, k);
                    MemorySegment.copy(w, 0, ws, JAVA_FLOAT, 0, w.length);
                    MemorySegment.copy(b, 0, bs, JAVA_FLOAT, 0, b.length);
                }
            }
        }
    }

    /** One packed object, a context per thread, all running at once (the Predictor's workspaces): every answer the single-threaded one. */
    @Test
    void contextsRunConcurrently() throws Exception {
        System.out.println("OnednnPackedMatmulTest.contextsRunConcurrently seed " + seed);
        Random r = new Random(seed);
        int n = 512, k = 640, maxRows = 8, threads = 4;
        float[] w = gaussian(r, (long) n * k), b = gaussian(r, n), x = gaussian(r, (long) maxRows * k);
        try (Arena arena = Arena.ofShared()) {
            MemorySegment ws = arena.allocateFrom(JAVA_FLOAT, w), bs = arena.allocateFrom(JAVA_FLOAT, b), xs = arena.allocateFrom(JAVA_FLOAT, x);
            try (OnednnPackedMatmul p = new OnednnPackedMatmul(ws, bs, n, k, maxRows, true)) {
                float[][] want = new float[maxRows + 1][];
                try (OnednnPackedMatmul.Context ctx = p.newContext()) {
                    for (int rows = 1; rows <= maxRows; rows++) {
                        MemorySegment y = arena.allocate((long) rows * n * Float.BYTES);
                        p.run(ctx, xs, y, rows);
                        want[rows] = y.toArray(JAVA_FLOAT);
                    }
                }
                ExecutorService pool = Executors.newFixedThreadPool(threads);
                try {
                    List<Future<Integer>> results = new ArrayList<>();
                    for (int t = 0; t < threads; t++) {
                        results.add(pool.submit(() -> {
                            int wrong = 0;
                            try (OnednnPackedMatmul.Context ctx = p.newContext(); Arena mine = Arena.ofConfined()) {
                                MemorySegment y = mine.allocate((long) maxRows * n * Float.BYTES);
                                for (int i = 0; i < 200; i++) {
                                    int rows = 1 + i % maxRows;
                                    p.run(ctx, xs, y, rows);
                                    if (MemorySegment.mismatch(y, 0, (long) rows * n * Float.BYTES, MemorySegment.ofArray(want[rows]), 0, (long) rows * n * Float.BYTES) != -1) wrong++;
                                }
                            }
                            return wrong;
                        }));
                    }
                    for (Future<Integer> f : results) assertEquals(0, f.get(), "answers that differ from the single-threaded ones");
                } finally {
                    pool.shutdown();
                }
            }
        }
    }

    @Test
    void badArgumentsAreOneLineErrors() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment w = arena.allocate(64L * 64 * Float.BYTES), small = arena.allocate(16);
            assertEquals("packed matmul: W holds 16 bytes, [64, 64] needs 16384",
                assertThrows(IllegalArgumentException.class, () -> new OnednnPackedMatmul(small, null, 64, 64, 4, true)).getMessage());
            try (OnednnPackedMatmul p = new OnednnPackedMatmul(w, null, 64, 64, 4, true); OnednnPackedMatmul.Context ctx = p.newContext()) {
                assertEquals("packed matmul: rows must be in [1, 4], got 5",
                    assertThrows(IllegalArgumentException.class, () -> p.run(ctx, w, w, 5)).getMessage());
                assertThrows(IllegalArgumentException.class, () -> p.run(ctx, small, w, 2));
            }
        }
    }
}
