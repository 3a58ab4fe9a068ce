package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.distill4j.cli.Main;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.io.Npy;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code distill train} and {@code distill distill}: a small run end to end, and bad input rejected before training. */
class TrainCommandTest {
    @TempDir
    Path tmp;

    private static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    private String data(String name, int n, long seed) throws Exception {
        ArrayDataset d = Synthetic.task(3, 8, 3, 1, 3f, 0.7f).sample(n, seed, 0f);
        float[] x = new float[n * 8];
        long[] y = new long[n];
        try (var arena = java.lang.foreign.Arena.ofConfined()) {
            var seg = arena.allocate(8 * 4L);
            for (int i = 0; i < n; i++) {
                d.sample(i, seg, 0);
                for (int j = 0; j < 8; j++) x[i * 8 + j] = seg.getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, j);
                y[i] = d.label(i);
            }
        }
        Path xs = tmp.resolve(name + "-x.npy"), ys = tmp.resolve(name + "-y.npy");
        Npy.writeFloats(xs, x, n, 8);
        Npy.writeLongs(ys, y, n);
        return "npy:" + xs + "," + ys;
    }

    private Path spec(String name, int in, int hidden, int out) throws Exception {
        Path p = tmp.resolve(name + ".json");
        Files.writeString(p, "{\"input\": [" + in + "], \"layers\": [{\"type\": \"linear\", \"in\": " + in + ", \"out\": " + hidden + "}, {\"type\": \"relu\"},"
            + "{\"type\": \"dropout\", \"p\": 0.1}, {\"type\": \"linear\", \"in\": " + hidden + ", \"out\": " + out + "}]}");
        return p;
    }

    @Test
    void trainThenDistillThenResume() throws Exception {
        String train = data("train", 400, 1), test = data("test", 200, 2);
        Path teacher = spec("teacher", 8, 32, 3), student = spec("student", 8, 8, 3);
        String[] t = run("train", "--model", teacher.toString(), "--data", train, "--test-data", test, "--epochs", "4", "--batch", "32",
            "--out", tmp.resolve("t").toString());
        assertEquals("0", t[0], t[2]);
        assertTrue(Files.exists(tmp.resolve("t/model.safetensors")));
        assertEquals(4, Files.readAllLines(tmp.resolve("t/metrics.jsonl")).size());
        assertTrue(t[1].contains("epoch 4/4"), t[1]);
        String[] d = run("distill", "--teacher", teacher.toString(), "--teacher-weights", tmp.resolve("t/model.safetensors").toString(), "--student",
            student.toString(), "--data", train, "--test-data", test, "--epochs", "3", "--batch", "32", "--checkpoint-every", "5", "--max-steps", "20",
            "--out", tmp.resolve("s").toString());
        assertEquals("0", d[0], d[2]);
        List<Path> checkpoints = new ArrayList<>();
        try (var s = Files.list(tmp.resolve("s/checkpoints"))) {
            s.forEach(checkpoints::add);
        }
        assertEquals(3, checkpoints.size(), "the newest 3 are kept: " + checkpoints);
        String[] r = run("distill", "--teacher", teacher.toString(), "--teacher-weights", tmp.resolve("t/model.safetensors").toString(), "--student",
            student.toString(), "--data", train, "--test-data", test, "--epochs", "3", "--batch", "32", "--checkpoint-every", "5", "--resume",
            "--out", tmp.resolve("s").toString());
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].contains("done: 39 steps"), r[1]);
    }

    @Test
    void badInputStopsBeforeTrainingWithOneLine() throws Exception {
        String train = data("train", 64, 1), test = data("test", 32, 2);
        Path model = spec("m", 8, 8, 3), wide = spec("wide", 9, 8, 3), five = spec("five", 8, 8, 5);
        String out = tmp.resolve("o").toString();
        String[][] cases = {
            {"train", "--model", tmp.resolve("missing.json").toString(), "--data", train, "--test-data", test, "--out", out},
            {"train", "--model", wide.toString(), "--data", train, "--test-data", test, "--out", out},
            {"train", "--model", model.toString(), "--data", train, "--test-data", test, "--batch", "0", "--out", out},
            {"train", "--model", model.toString(), "--data", "npy:" + tmp.resolve("nope.npy") + ",x", "--test-data", test, "--out", out},
            {"distill", "--teacher", five.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--data", train, "--test-data", test,
                "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--temperature", "-1", "--data", train,
                "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(),
                "--data", train, "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--hint", "1:7", "--data", train,
                "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--hint", "one:two", "--data", train,
                "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--teacher-cache", "disk", "--data", train,
                "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--teacher-cache", "device",
                "--teacher-cache-dtype", "f16", "--data", train, "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--teacher-cache-topk", "2",
                "--data", train, "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--teacher-cache", "device",
                "--teacher-cache-topk", "-1", "--data", train, "--test-data", test, "--out", out},
            {"distill", "--teacher", model.toString(), "--teacher-weights", "unused", "--student", model.toString(), "--teacher-cache", "device",
                "--teacher-cache-topk", "2", "--divergence", "reverse-kl", "--data", train, "--test-data", test, "--out", out},
            {"train", "--model", model.toString(), "--data", train, "--test-data", test, "--graph", "sometimes", "--out", out},
        };
        for (String[] c : cases) {
            String[] r = run(c);
            assertEquals("2", r[0], String.join(" ", c) + " -> " + r[2]);
            assertEquals(1, r[2].strip().lines().count(), r[2]);
            assertFalse(r[1].contains("epoch"), "no training started: " + r[1]);
        }
        assertFalse(Files.exists(tmp.resolve("o/model.safetensors")));
    }

    /** The distillation options of issue 6 end to end: a hint, a memory-mapped bf16 teacher cache (built, then reused), graph refusal, skipping. */
    @Test
    void hintCacheGraphAndSkipOptions() throws Exception {
        String train = data("train", 300, 1), test = data("test", 100, 2);
        Path teacher = spec("teacher", 8, 32, 3), student = spec("student", 8, 8, 3);
        String[] t = run("train", "--model", teacher.toString(), "--data", train, "--test-data", test, "--epochs", "2", "--batch", "32",
            "--out", tmp.resolve("t").toString());
        assertEquals("0", t[0], t[2]);
        String w = tmp.resolve("t/model.safetensors").toString();
        String[] h = run("distill", "--teacher", teacher.toString(), "--teacher-weights", w, "--student", student.toString(), "--hint", "1:1:0.5",
            "--data", train, "--test-data", test, "--epochs", "2", "--batch", "32", "--out", tmp.resolve("h").toString());
        assertEquals("0", h[0], h[2]);
        assertTrue(h[1].contains("(soft ") && h[1].contains(", hard ") && h[1].contains(", hint "), h[1]);
        String metrics = Files.readString(tmp.resolve("h/metrics.jsonl"));
        assertTrue(metrics.contains("\"soft_loss\"") && metrics.contains("\"hard_loss\"") && metrics.contains("\"hint_loss\""), metrics);
        Path cache = tmp.resolve("cache/t.safetensors");
        for (String expected : new String[] {"computed", "reused"}) {
            String[] c = run("distill", "--teacher", teacher.toString(), "--teacher-weights", w, "--student", student.toString(), "--teacher-cache",
                "file:" + cache, "--teacher-cache-dtype", "bf16", "--data", train, "--test-data", test, "--epochs", "2", "--batch", "32", "--out",
                tmp.resolve("c").toString());
            assertEquals("0", c[0], c[2]);
            assertTrue(c[1].contains("teacher cache: file " + cache + " BF16") && c[1].contains(expected), c[1]);
        }
        // A top-k cache: the 2 largest of the teacher's 3 logits a sample; more than its classes is one line, exit 2.
        String[] k = run("distill", "--teacher", teacher.toString(), "--teacher-weights", w, "--student", student.toString(), "--teacher-cache",
            "file:" + tmp.resolve("cache/top2.safetensors"), "--teacher-cache-topk", "2", "--data", train, "--test-data", test, "--epochs", "2",
            "--batch", "32", "--out", tmp.resolve("k").toString());
        assertEquals("0", k[0], k[2]);
        assertTrue(k[1].contains(" F32 top-2, ") && k[1].contains("computed"), k[1]);
        String[] tooMany = run("distill", "--teacher", teacher.toString(), "--teacher-weights", w, "--student", student.toString(), "--teacher-cache",
            "device", "--teacher-cache-topk", "4", "--data", train, "--test-data", test, "--epochs", "1", "--out", tmp.resolve("k4").toString());
        assertEquals("2", tooMany[0], tooMany[2]);
        assertTrue(tooMany[2].contains("the teacher has 3 classes") && tooMany[2].strip().lines().count() == 1, tooMany[2]);
        String[] g = run("distill", "--teacher", teacher.toString(), "--teacher-weights", w, "--student", student.toString(), "--graph", "on",
            "--data", train, "--test-data", test, "--epochs", "1", "--out", tmp.resolve("g").toString());
        assertEquals("2", g[0]);
        assertTrue(g[2].contains("--graph on is not possible here: the student has dropout"), g[2]);
        String[] s = run("train", "--model", student.toString(), "--data", train, "--test-data", test, "--epochs", "1", "--skip-non-finite",
            "--out", tmp.resolve("s").toString());
        assertEquals("0", s[0], s[2]);
        assertTrue(Files.readString(tmp.resolve("s/metrics.jsonl")).contains("\"skipped_steps\":0"));
    }
}
