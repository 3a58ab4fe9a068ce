package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.distill4j.cli.Main;
import org.distill4j.core.io.Npy;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code distill loss} as a user runs it: numbers against the PyTorch fixture, and bad input. */
class LossCommandTest {
    @TempDir
    Path tmp;

    private static final Path FIXTURES = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/distill-loss")
        .normalize();

    private record Result(int exit, String out, String err) {}

    private static Result run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new Result(exit, out.toString(), err.toString());
    }

    @Test
    void matchesPyTorchAndWritesTheGradient() throws Exception {
        Path f = FIXTURES.resolve("kl-t4-a09"), g = tmp.resolve("g.npy");
        Result r = run("loss", "--student", f.resolve("student.npy").toString(), "--teacher", f.resolve("teacher.npy").toString(),
            "--labels", f.resolve("labels.npy").toString(), "--temperature", "4", "--alpha", "0.9", "--grad-out", g.toString());
        assertEquals(0, r.exit(), r.err());
        List<String> lines = r.out().strip().lines().toList();
        double loss = Double.parseDouble(lines.getLast());
        double expected = Npy.read(f.resolve("expected_loss.npy")).data().getDouble(0);
        assertEquals(expected, loss, 1e-5 * expected);
        float[] grad = Npy.read(g).toFloats();
        Npy.Array ref = Npy.read(f.resolve("expected_grad.npy"));
        for (int i = 0; i < grad.length; i++) assertEquals(ref.data().getDouble(i * 8), grad[i], 1e-6);
        try (var files = Files.list(tmp)) {
            assertEquals(List.of(g), files.toList(), "only the gradient file, no temporary left behind");
        }
    }

    /** --dtype bf16: the loss of the bf16-rounded logits, the f32 gradient file widened from bf16. */
    @Test
    void bf16LogitsAreTheLossOfTheRoundedValues() throws Exception {
        Path f = FIXTURES.resolve("kl-t4-a09"), g = tmp.resolve("g16.npy"), s16 = tmp.resolve("s16.npy"), t16 = tmp.resolve("t16.npy");
        // The same logits rounded to bf16 by hand, given as float32: the f32 run of these is the bf16 run's exact reference.
        for (String[] io : new String[][] {{"student.npy", s16.toString()}, {"teacher.npy", t16.toString()}}) {
            Npy.Array a = Npy.read(f.resolve(io[0]));
            float[] v = a.toFloats();
            for (int i = 0; i < v.length; i++) v[i] = org.distill4j.core.Bf16.toFloat(org.distill4j.core.Bf16.fromFloat(v[i]));
            Npy.writeFloats(Path.of(io[1]), v, (int) a.shape()[0], (int) a.shape()[1]);
        }
        String y = f.resolve("labels.npy").toString();
        Result bf16 = run("loss", "--student", f.resolve("student.npy").toString(), "--teacher", f.resolve("teacher.npy").toString(), "--labels", y,
            "--dtype", "bf16", "--grad-out", g.toString());
        Result rounded = run("loss", "--student", s16.toString(), "--teacher", t16.toString(), "--labels", y);
        assertEquals(0, bf16.exit(), bf16.err());
        assertEquals(0, rounded.exit(), rounded.err());
        assertTrue(bf16.out().lines().findFirst().orElseThrow().endsWith("logits bf16"), bf16.out());
        assertEquals(rounded.out().strip().lines().toList().getLast(), bf16.out().strip().lines().toList().getLast(), "the same loss, digit for digit");
        double expected = Npy.read(f.resolve("expected_loss.npy")).data().getDouble(0);
        assertEquals(expected, Double.parseDouble(bf16.out().strip().lines().toList().getLast()), 2e-2 * expected, "close to the f32 loss");
        float[] grad = Npy.read(g).toFloats();
        for (float v : grad) assertEquals(v, org.distill4j.core.Bf16.toFloat(org.distill4j.core.Bf16.fromFloat(v)), "gradient values are bf16 values");
        Result bad = run("loss", "--student", s16.toString(), "--teacher", t16.toString(), "--dtype", "fp8");
        assertEquals(2, bad.exit());
        assertEquals(1, bad.err().strip().lines().count(), bad.err());
    }

    /**
     * --teacher-indices: a top-k teacher's kept logits and their classes (make_fixtures.py's top-k
     * cases, from torch.topk), against PyTorch float64 on the dense teacher with -inf elsewhere.
     */
    @Test
    void aTopKTeacherMatchesPyTorch() throws Exception {
        for (String name : new String[] {"kl-topk5-t2", "jsd-topk3-b03-t4", "kl-topk1-no-labels"}) {
            Path f = FIXTURES.resolve(name), g = tmp.resolve(name + "-g.npy");
            java.util.Properties p = new java.util.Properties();
            try (var in = Files.newBufferedReader(f.resolve("case.properties"))) {
                p.load(in);
            }
            List<String> args = new java.util.ArrayList<>(List.of("loss", "--student", f.resolve("student.npy").toString(),
                "--teacher", f.resolve("teacher_topk_values.npy").toString(), "--teacher-indices", f.resolve("teacher_topk_indices.npy").toString(),
                "--divergence", p.getProperty("divergence"), "--temperature", p.getProperty("temperature"), "--beta", p.getProperty("beta"),
                "--grad-out", g.toString()));
            if (Boolean.parseBoolean(p.getProperty("labels"))) args.addAll(List.of("--labels", f.resolve("labels.npy").toString(), "--alpha", p.getProperty("alpha")));
            Result r = run(args.toArray(String[]::new));
            assertEquals(0, r.exit(), name + ": " + r.err());
            assertTrue(r.out().lines().findFirst().orElseThrow().contains("teacher top-" + p.getProperty("topk")), r.out());
            double loss = Double.parseDouble(r.out().strip().lines().toList().getLast());
            double expected = Npy.read(f.resolve("expected_loss.npy")).data().getDouble(0);
            assertEquals(expected, loss, 1e-5 * expected, name);
            float[] grad = Npy.read(g).toFloats();
            Npy.Array ref = Npy.read(f.resolve("expected_grad.npy"));
            for (int i = 0; i < grad.length; i++) assertEquals(ref.data().getDouble(i * 8), grad[i], 1e-6, name + " grad[" + i + "]");
        }
    }

    @Test
    void badTopKTeachersAreOneLineAndExitTwo() throws Exception {
        Path f = FIXTURES.resolve("kl-topk5-t2");  // 6 rows, 40 classes, k = 5
        String s = f.resolve("student.npy").toString(), v = f.resolve("teacher_topk_values.npy").toString(), y = f.resolve("labels.npy").toString();
        long[] idx = Npy.read(f.resolve("teacher_topk_indices.npy")).toLongs("indices");
        Path twice = tmp.resolve("twice.npy"), outside = tmp.resolve("outside.npy"), floats = tmp.resolve("floats.npy"), narrow = tmp.resolve("narrow.npy");
        long[] t = idx.clone();
        t[7] = t[6];  // row 1 names one class twice
        Npy.writeLongs(twice, t, 6, 5);
        long[] o = idx.clone();
        o[29] = 40;
        Npy.writeLongs(outside, o, 6, 5);
        Npy.writeFloats(floats, new float[30], 6, 5);
        Npy.writeLongs(narrow, java.util.Arrays.copyOf(idx, 24), 6, 4);
        String[][] cases = {
            {"--student", s, "--teacher", v, "--teacher-indices", twice.toString()},                     // a class twice in a row
            {"--student", s, "--teacher", v, "--teacher-indices", outside.toString()},                   // a class outside [0, C)
            {"--student", s, "--teacher", v, "--teacher-indices", floats.toString()},                    // indices not integers
            {"--student", s, "--teacher", v, "--teacher-indices", narrow.toString()},                    // indices [6, 4] for values [6, 5]
            {"--student", s, "--teacher", v},                                                            // kept logits without their indices
            {"--student", s, "--teacher", f.resolve("teacher.npy").toString()},                          // the dense form: -inf is not finite
            {"--student", s, "--teacher", v, "--teacher-indices", tmp.resolve("missing.npy").toString()},
            {"--student", s, "--teacher", v, "--teacher-indices", f.resolve("teacher_topk_indices.npy").toString(), "--divergence", "reverse-kl"},
            {"--student", s, "--teacher", v, "--teacher-indices", f.resolve("teacher_topk_indices.npy").toString(), "--divergence", "mse"},
            {"--student", s, "--teacher", v, "--teacher-indices", f.resolve("teacher_topk_indices.npy").toString(), "--divergence", "jsd",
             "--beta", "1", "--labels", y},                                                              // JSD at beta 1 is reverse KL
        };
        refusedInOneLine(cases);
    }

    @Test
    void badInputIsOneLineAndExitTwo() throws Exception {
        Path f = FIXTURES.resolve("kl-t4-a09");
        String s = f.resolve("student.npy").toString(), t = f.resolve("teacher.npy").toString(), y = f.resolve("labels.npy").toString();
        Path nan = tmp.resolve("nan.npy");
        float[] v = Npy.read(f.resolve("student.npy")).toFloats();
        v[5] = Float.NaN;
        Npy.writeFloats(nan, v, 7, 13);
        Path badLabels = tmp.resolve("labels.npy");
        Npy.writeLongs(badLabels, new long[] {0, 1, 2, 3, 4, 5, 13}, 7);
        Path wide = tmp.resolve("wide.npy");
        Npy.writeFloats(wide, new float[7 * 14], 7, 14);
        Path notNpy = tmp.resolve("junk.npy");
        Files.writeString(notNpy, "hello");
        String[][] cases = {
            {"--student", s, "--teacher", y},                                   // wrong dtype
            {"--student", s, "--teacher", wide.toString()},                     // mismatched shapes
            {"--student", nan.toString(), "--teacher", t},                      // non-finite input
            {"--student", s, "--teacher", t, "--temperature", "-1"},            // temperature <= 0
            {"--student", s, "--teacher", t, "--labels", y, "--alpha", "2"},    // alpha outside [0, 1]
            {"--student", s, "--teacher", t, "--divergence", "jsd", "--beta", "1.5"},
            {"--student", s, "--teacher", t, "--divergence", "kld"},            // unknown divergence
            {"--student", s, "--teacher", t, "--alpha", "0.5"},                 // alpha without labels
            {"--student", s, "--teacher", t, "--labels", badLabels.toString()}, // label outside [0, C)
            {"--student", notNpy.toString(), "--teacher", t},                   // not a .npy file
            {"--student", tmp.resolve("missing.npy").toString(), "--teacher", t},
            {"--student", s},                                                   // missing option
        };
        refusedInOneLine(cases);
    }

    /** Each case (the arguments after "loss") exits with 2 and one line on stderr, no stack trace. */
    private static void refusedInOneLine(String[][] cases) {
        for (String[] c : cases) {
            String[] args = new String[c.length + 1];
            args[0] = "loss";
            System.arraycopy(c, 0, args, 1, c.length);
            Result r = run(args);
            assertEquals(2, r.exit(), String.join(" ", c) + " -> " + r.err());
            assertEquals(1, r.err().strip().lines().count(), String.join(" ", c) + " -> " + r.err());
            assertFalse(r.err().contains("Exception") || r.err().contains("\tat "), r.err());
        }
    }
}
