package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.distill4j.cli.Main;
import org.distill4j.core.io.Safetensors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * One SGD step of {@code distill train} and {@code distill distill} on decoders equals PyTorch's
 * (issue 22, "One SGD step against PyTorch"). Fixtures: fixtures/lm-train, made by
 * make_lm_train_fixtures.py (tiny gpt2 / llama / qwen3 folders sharing a vocabulary of 96, 4 windows
 * of 8 + 1 tokens, and per case every parameter after one torch.optim.SGD step in float64).
 *
 * <p>Compared: the update, not the parameters. Per parameter, (p_after - p_init) from OUT/model.safetensors
 * against (p_ref - p_init), max |difference| / max |reference update| <= 1e-4. Each case's lr makes one
 * float32 ulp of a parameter's largest weight at most 1e-5 of its largest update (the generator checks),
 * so the rounding of the stored weights cannot reach the tolerance; PyTorch's own float32 step is within
 * 1e-6..7e-6 of the float64 reference. A wrong alpha, temperature factor, divergence or normaliser moves
 * whole updates by tens of percent.
 */
class LmTrainStepTest {
    @TempDir
    Path tmp;

    private static final Path FIXTURES = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/lm-train").normalize();
    private static final double REL_TOL = 1e-4;

    private static final String[] SGD = {"--optimizer", "sgd", "--momentum", "0", "--weight-decay", "0", "--schedule", "constant", "--warmup", "0",
        "--clip-norm", "0", "--max-steps", "1", "--epochs", "1", "--seed", "0", "--seq-len", "8"};

    /**
     * A case: its name, the expected file (expected/NAME.safetensors), the model folder the step starts from, and
     * the CLI arguments without --out (paths relative to the fixtures folder). Batch 4 is every window of the
     * token file: one step sees all of them.
     */
    record Case(String name, String expected, String init, List<String> args) {
        @Override
        public String toString() {
            return name;
        }
    }

    private static Case train(String name, String expected, String model, double lr, int batch, int accumulation, String tokens, String... extra) {
        List<String> a = new ArrayList<>(List.of("train", "--model", "models/" + model, "--data", "tokens:" + tokens));
        a.addAll(List.of(SGD));
        a.addAll(List.of("--lr", num(lr), "--batch", String.valueOf(batch), "--accumulation", String.valueOf(accumulation)));
        a.addAll(List.of(extra));
        return new Case(name, expected, model, a);
    }

    private static Case distill(String name, String expected, String teacher, String student, String divergence, double temperature, double alpha,
                                Double beta, double lr, int batch, int accumulation, String tokens, String... extra) {
        List<String> a = new ArrayList<>(List.of("distill", "--teacher", "models/" + teacher, "--student", "models/" + student, "--divergence", divergence,
            "--temperature", num(temperature), "--alpha", num(alpha)));
        if (beta != null) a.addAll(List.of("--beta", num(beta)));
        a.addAll(List.of("--data", "tokens:" + tokens));
        a.addAll(List.of(SGD));
        a.addAll(List.of("--lr", num(lr), "--batch", String.valueOf(batch), "--accumulation", String.valueOf(accumulation)));
        a.addAll(List.of(extra));
        return new Case(name, expected, student, a);
    }

    /** As Python's "%g" writes it (the generator's metadata): 1, 0.5, 1.5. */
    private static String num(double x) {
        return x == Math.rint(x) ? String.valueOf((long) x) : String.valueOf(x);
    }

    private static final String TOKENS = "tokens-b4-t8.npy", TAIL = "tokens-b4-t8-tail.npy";

    static Stream<Case> cases() {
        return Stream.of(
            // CE only: qwen3 (untied, q/k norms, head_dim != hidden / heads) and gpt2 (tied lm_head, biases, LayerNorm, learned positions).
            train("train-qwen3", "train-qwen3", "student-qwen3", 1, 4, 1, TOKENS),
            train("train-gpt2-tied", "train-gpt2-tied", "teacher-gpt2", 1, 4, 1, TOKENS),
            // Two micro-batches of 2 windows (the tail file's partial 5th window dropped) == one batch of 4.
            train("train-qwen3-accumulation", "train-qwen3", "student-qwen3", 1, 2, 2, TAIL),
            // llama GQA teacher -> tied llama student: each divergence, alpha < 1 and alpha = 1.
            distill("kl-t2-a05", "kl-t2-a05", "teacher-llama-gqa", "student-llama-tied", "kl", 2, 0.5, null, 1, 4, 1, TOKENS),
            distill("reverse-kl-t1.5-a1", "reverse-kl-t1.5-a1", "teacher-llama-gqa", "student-llama-tied", "reverse-kl", 1.5, 1, null, 4, 4, 1, TOKENS),
            distill("jsd-b03-t1-a07", "jsd-b03-t1-a07", "teacher-llama-gqa", "student-llama-tied", "jsd", 1, 0.7, 0.3, 2, 4, 1, TOKENS),
            // Teacher and student of different families sharing the vocabulary.
            distill("kl-t1-a1-gpt2-to-qwen3", "kl-t1-a1-gpt2-to-qwen3", "teacher-gpt2", "student-qwen3", "kl", 1, 1, null, 1, 4, 1, TOKENS),
            distill("kl-t2-a05-accumulation", "kl-t2-a05", "teacher-llama-gqa", "student-llama-tied", "kl", 2, 0.5, null, 1, 2, 2, TAIL),
            // The chunked loss over 5 / 3 of the 32 token rows at a time (an uneven last chunk): the same step.
            distill("kl-t2-a05-loss-chunk5", "kl-t2-a05", "teacher-llama-gqa", "student-llama-tied", "kl", 2, 0.5, null, 1, 4, 1, TOKENS, "--loss-chunk", "5"),
            train("train-gpt2-tied-loss-chunk3", "train-gpt2-tied", "teacher-gpt2", 1, 4, 1, TOKENS, "--loss-chunk", "3"));
    }

    private static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    /** A safetensors file's F32 tensors as arrays, with their shapes and metadata. */
    record Tensors(Map<String, float[]> values, Map<String, long[]> shapes, Map<String, String> metadata) {}

    private static Tensors read(Path file) throws Exception {
        Map<String, float[]> values = new LinkedHashMap<>();
        Map<String, long[]> shapes = new LinkedHashMap<>();
        try (Safetensors st = Safetensors.open(file)) {
            for (Safetensors.Entry e : st.entries().values()) {
                assertEquals("F32", e.dtype(), file + ": " + e.name() + " is " + e.dtype() + ", expected F32");
                MemorySegment bytes = st.bytes(e);
                values.put(e.name(), bytes.toArray(ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN)));
                shapes.put(e.name(), e.shape());
            }
            return new Tensors(values, shapes, Map.copyOf(st.metadata()));
        }
    }

    /** The case's arguments with the fixture paths made absolute. */
    private static List<String> resolved(Case c) {
        List<String> a = new ArrayList<>();
        for (String s : c.args()) {
            if (s.startsWith("models/")) a.add(FIXTURES.resolve(s).toString());
            else if (s.startsWith("tokens:")) a.add("tokens:" + FIXTURES.resolve(s.substring("tokens:".length())));
            else a.add(s);
        }
        return a;
    }

    /** The fixtures agree with this table (needs no trainer): each one-batch case's args are the generator's, every parameter is expected once. */
    @Test
    void fixturesMatchTheCaseTable() throws Exception {
        for (Case c : cases().toList()) {
            Tensors want = read(FIXTURES.resolve("expected/" + c.expected() + ".safetensors"));
            Tensors init = read(FIXTURES.resolve("models/" + c.init() + "/model.safetensors"));
            if (c.name().equals(c.expected())) assertEquals(want.metadata().get("args"), String.join(" ", c.args()), c.name());
            TreeSet<String> expectedKeys = new TreeSet<>();
            for (String k : want.values().keySet()) if (k.startsWith("param.")) expectedKeys.add(k.substring("param.".length()));
            assertEquals(new TreeSet<>(init.values().keySet()), expectedKeys, c.name());
            assertTrue(want.values().containsKey("loss"), c.name());
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void oneSgdStepEqualsPyTorch(Case c) throws Exception {
        Path out = tmp.resolve(c.name());
        List<String> args = resolved(c);
        args.addAll(List.of("--out", out.toString()));
        String[] r = run(args.toArray(String[]::new));
        assertEquals("0", r[0], c.name() + ": distill " + String.join(" ", args) + "\nstdout: " + r[1] + "\nstderr: " + r[2]);

        Tensors init = read(FIXTURES.resolve("models/" + c.init() + "/model.safetensors"));
        Tensors want = read(FIXTURES.resolve("expected/" + c.expected() + ".safetensors"));
        Tensors got = read(out.resolve("model.safetensors"));
        assertTrue(Files.exists(out.resolve("config.json")), c.name() + ": no config.json in " + out);

        // Same keys as save_pretrained writes: a tied weight once (no lm_head.weight beside the embedding).
        TreeSet<String> wantKeys = new TreeSet<>(init.values().keySet());
        TreeSet<String> extra = new TreeSet<>(got.values().keySet()), missing = new TreeSet<>(wantKeys);
        extra.removeAll(wantKeys);
        missing.removeAll(got.values().keySet());
        assertTrue(extra.isEmpty() && missing.isEmpty(), c.name() + ": OUT/model.safetensors keys: unexpected " + extra + ", missing " + missing);

        // Per parameter: max |(got - init) - (ref - init)| / max |ref - init|.
        List<String> failures = new ArrayList<>();
        double worst = 0;
        String worstKey = null;
        for (String k : wantKeys) {
            assertArrayEquals(init.shapes().get(k), got.shapes().get(k), c.name() + ": " + k + " shape");
            float[] p0 = init.values().get(k), p1 = got.values().get(k), ref = want.values().get("param." + k);
            double diff = 0, scale = 0;
            int at = 0;
            for (int i = 0; i < p0.length; i++) {
                double refUpdate = (double) ref[i] - p0[i], gotUpdate = (double) p1[i] - p0[i];
                scale = Math.max(scale, Math.abs(refUpdate));
                if (Math.abs(gotUpdate - refUpdate) > diff) {
                    diff = Math.abs(gotUpdate - refUpdate);
                    at = i;
                }
            }
            double rel = diff / scale;
            if (!(rel <= REL_TOL)) {
                failures.add(String.format(Locale.ROOT, "%s: relative error %.3e (element %d: update %.6e, PyTorch %.6e; max |PyTorch update| %.3e)", k, rel, at,
                    (double) p1[at] - p0[at], (double) ref[at] - p0[at], scale));
            }
            if (!(rel <= worst)) {
                worst = rel;
                worstKey = k;
            }
        }
        System.out.printf(Locale.ROOT, "%s: %d parameters, max relative update error %.3e (%s)%n", c.name(), wantKeys.size(), worst, worstKey);
        if (!failures.isEmpty()) fail(c.name() + ": " + failures.size() + " of " + wantKeys.size() + " parameters differ from PyTorch:\n  " + String.join("\n  ", failures));

        // The step's loss (train_loss is the last step's whole objective; soft/hard its terms, where written).
        String metrics = Files.readString(out.resolve("metrics.jsonl")).strip();
        String last = metrics.substring(metrics.lastIndexOf('\n') + 1);
        for (String term : new String[] {"loss", "soft_loss", "hard_loss"}) {
            float[] ref = want.values().get(term);
            if (ref == null) continue;
            String field = term.equals("loss") ? "train_loss" : term;
            Matcher m = Pattern.compile("\"" + field + "\":(-?[0-9.eE+-]+)").matcher(last);
            if (!m.find()) {
                assertTrue(!term.equals("loss"), c.name() + ": no train_loss in metrics.jsonl's last row " + last);
                continue;
            }
            double g = Double.parseDouble(m.group(1));
            assertTrue(Math.abs(g - ref[0]) <= 1e-4 * Math.abs(ref[0]), c.name() + ": " + field + " " + g + ", PyTorch " + ref[0]);
        }
    }
}
