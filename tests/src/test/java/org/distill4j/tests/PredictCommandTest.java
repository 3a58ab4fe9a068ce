package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import org.distill4j.cli.Main;
import org.distill4j.core.io.Npy;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code distill predict} and {@code distill info --model} against the PyTorch interop fixture. */
class PredictCommandTest {
    @TempDir
    Path tmp;

    private static final Path FIXTURE = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/model").normalize();

    private static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    @Test
    void reproducesPyTorchLogitsForEveryBatchSize() throws Exception {
        float[] expected = Npy.read(FIXTURE.resolve("logits.npy")).toFloats();
        for (String batch : new String[] {"1", "3", "256"}) {
            Path out = tmp.resolve("out-" + batch + ".npy");
            String[] r = run("predict", "--model", FIXTURE.resolve("cnn.json").toString(), "--weights", FIXTURE.resolve("cnn.safetensors").toString(),
                "--input", FIXTURE.resolve("input.npy").toString(), "--output", out.toString(), "--batch", batch);
            assertEquals("0", r[0], r[2]);
            Npy.Array got = Npy.read(out);
            assertArrayEquals(new long[] {4, 5}, got.shape());
            float[] g = got.toFloats();
            for (int i = 0; i < g.length; i++) assertEquals(expected[i], g[i], 1e-4 * Math.max(1, Math.abs(expected[i])));
        }
    }

    /** The Predictor gives exactly distill predict's numbers: batch 1 with 1 and 8 threads, and the whole input as one batch. */
    @Test
    void predictorMatchesDistillPredict() throws Exception {
        Path spec = FIXTURE.resolve("cnn.json"), w = FIXTURE.resolve("cnn.safetensors"), x = FIXTURE.resolve("input.npy");
        float[] input = Npy.read(x).toFloats();
        for (String batch : new String[] {"1", "4"}) {
            Path out = tmp.resolve("p-" + batch + ".npy");
            String[] r = run("predict", "--model", spec.toString(), "--weights", w.toString(), "--input", x.toString(), "--output", out.toString(), "--batch", batch);
            assertEquals("0", r[0], r[2]);
            float[] want = Npy.read(out).toFloats();
            try (org.distill4j.core.infer.Predictor p = org.distill4j.core.infer.Predictor.load(org.distill4j.core.cpu.CpuBackend.get(), spec, w,
                org.distill4j.core.infer.Predictor.Options.defaults())) {
                int in = (int) p.inputSize(), outSize = (int) p.outputSize(), rows = input.length / in;
                if (batch.equals("4")) {
                    org.junit.jupiter.api.Assertions.assertArrayEquals(want, p.predict(input), "one batch of " + rows);
                    continue;
                }
                for (int threads : new int[] {1, 8}) {
                    float[] got = new float[want.length];
                    java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newFixedThreadPool(threads);
                    java.util.List<java.util.concurrent.Future<?>> fs = new java.util.ArrayList<>();
                    for (int rep = 0; rep < 50; rep++) {
                        for (int row = 0; row < rows; row++) {
                            int rr = row;
                            fs.add(pool.submit(() -> {
                                float[] one = p.predict(java.util.Arrays.copyOfRange(input, rr * in, (rr + 1) * in));
                                synchronized (got) {
                                    System.arraycopy(one, 0, got, rr * outSize, outSize);
                                }
                                org.junit.jupiter.api.Assertions.assertArrayEquals(java.util.Arrays.copyOfRange(want, rr * outSize, (rr + 1) * outSize), one);
                            }));
                        }
                    }
                    for (var f : fs) f.get();
                    pool.shutdown();
                    org.junit.jupiter.api.Assertions.assertArrayEquals(want, got, threads + " threads, batch 1");
                }
            }
        }
    }

    @Test
    void badInputIsOneLineExitTwo() throws Exception {
        Path spec = FIXTURE.resolve("cnn.json"), w = FIXTURE.resolve("cnn.safetensors"), x = FIXTURE.resolve("input.npy");
        Path wrongShape = tmp.resolve("x.npy");
        Npy.writeFloats(wrongShape, new float[2 * 3 * 10 * 10], 2, 3, 10, 10);
        Path badSpec = tmp.resolve("bad.json");
        Files.writeString(badSpec, "{\"input\": [3, 12, 12], \"layers\": [{\"type\": \"linear\", \"in\": 5, \"out\": 2}]}");
        String[][] cases = {
            {"predict", "--model", spec.toString(), "--weights", w.toString(), "--input", wrongShape.toString(), "--output", tmp.resolve("o.npy").toString()},
            {"predict", "--model", badSpec.toString(), "--weights", w.toString(), "--input", x.toString(), "--output", tmp.resolve("o.npy").toString()},
            {"predict", "--model", spec.toString(), "--weights", x.toString(), "--input", x.toString(), "--output", tmp.resolve("o.npy").toString()},
            {"info", "--model", badSpec.toString()},
        };
        for (String[] c : cases) {
            String[] r = run(c);
            assertEquals("2", r[0], String.join(" ", c) + " -> " + r[2]);
            assertEquals(1, r[2].strip().lines().count(), r[2]);
        }
        assertTrue(!Files.exists(tmp.resolve("o.npy")), "nothing half-written");
    }

    @Test
    void infoModelPrintsParametersAndOutputShape() {
        String[] r = run("info", "--model", FIXTURE.resolve("cnn.json").toString());
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].contains("output [5]") && r[1].contains("parameters: 2,289") && r[1].contains("5.shortcut.1.running_var"), r[1]);
    }

    @Test
    void evalReportsAccuracyAgainstTheLogitsArgmax() throws Exception {
        float[] logits = Npy.read(FIXTURE.resolve("logits.npy")).toFloats();
        long[] labels = new long[4];
        int correct = 0;
        for (int r = 0; r < 4; r++) {
            int best = 0;
            for (int c = 1; c < 5; c++) if (logits[r * 5 + c] > logits[r * 5 + best]) best = c;
            labels[r] = r % 2 == 0 ? best : (best + 1) % 5;
            if (labels[r] == best) correct++;
        }
        Path y = tmp.resolve("y.npy");
        Npy.writeLongs(y, labels, 4);
        String[] r = run("eval", "--model", FIXTURE.resolve("cnn.json").toString(), "--weights", FIXTURE.resolve("cnn.safetensors").toString(),
            "--data", "npy:" + FIXTURE.resolve("input.npy") + "," + y, "--batch", "3");
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].startsWith(String.format("accuracy %.2f%% (%d of 4)", 100.0 * correct / 4, correct)), r[1]);
        String[] bad = run("eval", "--model", FIXTURE.resolve("cnn.json").toString(), "--weights", FIXTURE.resolve("cnn.safetensors").toString(),
            "--data", "csv:whatever");
        assertEquals("2", bad[0]);
        assertTrue(bad[2].contains("unknown kind 'csv'"), bad[2]);
    }
}
