package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.distill4j.cli.Main;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Npy;
import org.distill4j.core.lm.DecoderModel;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code distill train} and {@code distill distill} with decoder folders: a run writes a Hugging Face folder that
 * loads back, with metrics and the tokenizer; every bad input of issue 22 is one line, exit 2, and no output folder.
 */
class DecoderTrainCommandTest {
    @TempDir
    Path tmp;

    private static final Path FIXTURES = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures").normalize();
    private static final Path LM = FIXTURES.resolve("lm"), TOK = FIXTURES.resolve("tok");
    private static final ObjectMapper JSON = new ObjectMapper();

    private static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    private Path tokens(String name, int n, int vocab) throws Exception {
        Random r = new Random(n * 31L + vocab);
        long[] t = new long[n];
        for (int i = 0; i < n; i++) t[i] = r.nextInt(vocab);
        Path f = tmp.resolve(name);
        Npy.writeLongs(f, t, n);
        return f;
    }

    private static void assertBadInput(String[] r, String expected, Path out) {
        assertEquals("2", r[0], "exit code; stderr: " + r[2] + " stdout: " + r[1]);
        List<String> lines = r[2].strip().lines().toList();
        assertEquals(1, lines.size(), "one line: " + r[2]);
        assertTrue(lines.getFirst().contains(expected), "'" + expected + "' in: " + lines.getFirst());
        assertFalse(Files.exists(out.resolve("model.safetensors")), "nothing written to " + out);
    }

    @Test
    void trainWritesAFolderThatLoadsBackWithMetricsAndTokenizer() throws Exception {
        Path train = tokens("train.npy", 700, 128), val = tokens("val.npy", 200, 128), out = tmp.resolve("out");
        String[] r = run("train", "--model", LM.resolve("gpt2").toString(), "--data", "tokens:" + train, "--test-data", "tokens:" + val, "--seq-len", "16",
            "--batch", "4", "--max-steps", "5", "--lr", "3e-3", "--out", out.toString());
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].contains("val perplexity"), r[1]);
        for (String f : List.of("config.json", "model.safetensors", "metrics.jsonl")) assertTrue(Files.exists(out.resolve(f)), f);
        var row = JSON.readTree(Files.readAllLines(out.resolve("metrics.jsonl")).getLast());
        assertEquals(5, row.get("step").asInt());
        assertEquals(Math.exp(row.get("val_loss").asDouble()), row.get("val_perplexity").asDouble(), 1e-9);
        try (DecoderModel m = DecoderModel.load(CpuBackend.get(), out); DecoderModel before = DecoderModel.load(CpuBackend.get(), LM.resolve("gpt2"))) {
            assertEquals(before.parameterCount(), m.parameterCount());
            assertFalse(java.util.Arrays.equals(before.parameter("transformer.wte.weight").value().toFloatArray(),
                m.parameter("transformer.wte.weight").value().toFloatArray()), "the weights moved");
        }
        // eval on the written folder reads what training reported
        String[] e = run("eval", "--model", out.toString(), "--data", "tokens:" + val, "--seq-len", "16", "--batch", "4");
        assertEquals("0", e[0], e[2]);
        var m = java.util.regex.Pattern.compile("eval: loss ([0-9.]+),").matcher(e[1]);
        assertTrue(m.find(), e[1]);
        assertEquals(row.get("val_loss").asDouble(), Double.parseDouble(m.group(1)), 1e-4, e[1]);
    }

    @Test
    void newStudentFromConfigAndTokenizerCopied() throws Exception {
        // A folder with config.json only: a fresh model (seeded); --tokenizer is copied next to it.
        Path cfgOnly = tmp.resolve("fresh");
        Files.createDirectories(cfgOnly);
        ObjectNode c = (ObjectNode) JSON.readTree(LM.resolve("gpt2/config.json").toFile());
        c.put("vocab_size", 50304);
        Files.writeString(cfgOnly.resolve("config.json"), c.toPrettyString());
        // text: data, tokenised once with --tokenizer and cached beside the text
        Path text = tmp.resolve("book.txt"), out = tmp.resolve("out");
        Files.copy(TOK.resolve("moby-slice.txt"), text);
        String[] r = run("train", "--model", cfgOnly.toString(), "--data", "text:" + text, "--seq-len", "8", "--batch", "2", "--max-steps", "2",
            "--tokenizer", TOK.resolve("gpt2").toString(), "--out", out.toString());
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].contains("a new model"), r[1]);
        assertTrue(Files.exists(out.resolve("tokenizer.json")));
        try (var cached = Files.list(tmp)) {
            assertEquals(1, cached.filter(p -> p.getFileName().toString().matches("book\\.txt\\.[0-9a-f]{16}\\.tokens\\.bin")).count(), "the token cache beside the text");
        }
    }

    @Test
    void distillFromTeacherLayersWithHint() throws Exception {
        Path train = tokens("train.npy", 500, 96), out = tmp.resolve("out");
        String[] r = run("distill", "--teacher", LM.resolve("qwen3").toString(), "--student-init", "teacher-layers:1", "--data", "tokens:" + train,
            "--seq-len", "12", "--batch", "3", "--max-steps", "3", "--temperature", "1", "--alpha", "0.9", "--hint", "1:2:0.5", "--hint-loss", "cosine",
            "--divergence", "jsd", "--beta", "0.4", "--out", out.toString());
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].contains("teacher's layers [1]"), r[1]);
        assertTrue(r[1].contains("hint: student hidden state 1 -> teacher hidden state 2, cosine"), r[1]);
        var row = JSON.readTree(Files.readAllLines(out.resolve("metrics.jsonl")).getLast());
        assertTrue(row.has("soft_loss") && row.has("hard_loss") && row.has("hint_loss"), row.toString());
        try (DecoderModel m = DecoderModel.load(CpuBackend.get(), out)) {
            assertEquals(1, m.config().layers());
        }
    }

    @Test
    void onPolicyDistillation() throws Exception {
        Path train = tokens("train.npy", 600, 96), out = tmp.resolve("out");
        String[] r = run("distill", "--teacher", LM.resolve("qwen3").toString(), "--student", LM.resolve("mistral").toString(), "--data", "tokens:" + train,
            "--seq-len", "10", "--batch", "2", "--max-steps", "6", "--temperature", "1", "--divergence", "jsd", "--beta", "0.5",
            "--on-policy-fraction", "0.5", "--prompt-len", "4", "--sample-temperature", "0.9", "--out", out.toString());
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].contains("on-policy: 50% of the micro-batches are student continuations of each window's first 4 tokens (7 sampled"), r[1]);
        var m = java.util.regex.Pattern.compile("on-policy: (\\d+) of 6 micro-batches").matcher(r[1]);
        assertTrue(m.find(), r[1]);
        int n = Integer.parseInt(m.group(1));
        assertTrue(n > 0 && n < 6, "about half of 6 micro-batches on-policy, got " + n);
        assertBadInput(run("distill", "--teacher", LM.resolve("qwen3").toString(), "--student", LM.resolve("mistral").toString(), "--data",
            "tokens:" + train, "--seq-len", "10", "--on-policy-fraction", "0.5", "--prompt-len", "11", "--out", tmp.resolve("out2").toString()),
            "--prompt-len 11 is longer than the window", tmp.resolve("out2"));
    }

    @Test
    void aBf16TeacherRunsInBf16AsStoredOrInF32WhenAsked() throws Exception {
        // llama-tied-rope3-bf16's weights are BF16 on disk: "stored" runs it in bf16 where oneDNN multiplies bf16, f32 on request.
        Path train = tokens("train.npy", 300, 128);
        String teacher = LM.resolve("llama-tied-rope3-bf16").toString();
        double[] loss = new double[2];
        String[] dtypes = {"stored", "f32"};
        for (int i = 0; i < 2; i++) {
            Path out = tmp.resolve("out-" + dtypes[i]);
            String[] r = run("distill", "--teacher", teacher, "--student-init", "teacher-layers:0", "--data", "tokens:" + train, "--seq-len", "8",
                "--batch", "2", "--max-steps", "2", "--temperature", "1", "--teacher-dtype", dtypes[i], "--out", out.toString());
            assertEquals("0", r[0], r[2]);
            String expected = i == 1 ? "run in float32 (--teacher-dtype f32)"
                : org.distill4j.core.cpu.CpuBlas.hasFastBf16() ? "run in bf16 (as stored)" : "has no bf16 matrix product";
            assertTrue(r[1].contains(expected), "'" + expected + "' in: " + r[1]);
            loss[i] = JSON.readTree(Files.readAllLines(out.resolve("metrics.jsonl")).getFirst()).get("soft_loss").asDouble();
            try (DecoderModel m = DecoderModel.load(CpuBackend.get(), out)) {
                assertEquals(org.distill4j.core.DType.F32, m.writeDtype(), "a trained student is written in float32, whatever its teacher ran in");
            }
        }
        if (org.distill4j.core.cpu.CpuBlas.hasFastBf16()) {
            assertTrue(loss[0] != loss[1], "a bf16 teacher gives other soft targets than the float32 one: " + loss[0] + " vs " + loss[1]);
            assertEquals(loss[1], loss[0], 0.02 * Math.abs(loss[1]), "but close ones");
        }
        assertBadInput(run("distill", "--teacher", teacher, "--student-init", "teacher-layers:0", "--data", "tokens:" + train, "--seq-len", "8",
            "--teacher-dtype", "fp8", "--out", tmp.resolve("bad").toString()), "--teacher-dtype must be stored, f32 or bf16, got 'fp8'", tmp.resolve("bad"));
    }

    @Test
    void paddedVocabulariesShareTheirRange() throws Exception {
        // gpt2 (vocab 128) teacher, llama-gqa (vocab 112) student: padding only -> the shared ids [0, 112), said in the log
        Path train = tokens("train.npy", 400, 112), out = tmp.resolve("out");
        String[] r = run("distill", "--teacher", LM.resolve("gpt2").toString(), "--student", LM.resolve("llama-gqa").toString(), "--data", "tokens:" + train,
            "--seq-len", "8", "--batch", "2", "--max-steps", "2", "--out", out.toString());
        assertEquals("0", r[0], r[2]);
        assertTrue(r[1].contains("the loss uses the shared ids [0, 112)"), r[1]);
    }

    @Test
    void badInputIsOneLineAndExitTwo() throws Exception {
        Path out = tmp.resolve("out"), train = tokens("train.npy", 400, 96);
        String gpt2 = LM.resolve("gpt2").toString(), qwen3 = LM.resolve("qwen3").toString();
        // --seq-len beyond the context (gpt2: n_positions 64)
        assertBadInput(run("train", "--model", gpt2, "--data", "tokens:" + train, "--seq-len", "65", "--out", out.toString()), "n_positions", out);
        assertBadInput(run("distill", "--teacher", gpt2, "--student", qwen3, "--data", "tokens:" + train, "--seq-len", "65", "--out", out.toString()),
            "longer than the context of the teacher", out);
        // a student folder without config.json
        Path empty = tmp.resolve("empty");
        Files.createDirectories(empty);
        assertBadInput(run("distill", "--teacher", gpt2, "--student", empty.toString(), "--data", "tokens:" + train, "--seq-len", "8", "--out",
            out.toString()), "config.json", out);
        // vocabularies that differ by more than padding (128 vs 96)
        assertBadInput(run("distill", "--teacher", gpt2, "--student", qwen3, "--data", "tokens:" + train, "--seq-len", "8", "--out", out.toString()),
            "differ by more than padding", out);
        // ids at or above the vocabulary
        Path big = tokens("big.npy", 400, 200);
        assertBadInput(run("train", "--model", gpt2, "--data", "tokens:" + big, "--seq-len", "8", "--out", out.toString()), "outside", out);
        // a tokenizer that does not match the model (GPT-2's 50,257 ids, a 128-id model)
        assertBadInput(run("train", "--model", gpt2, "--data", "tokens:" + train, "--seq-len", "8", "--tokenizer", TOK.resolve("gpt2").toString(),
            "--out", out.toString()), "not this model's tokenizer", out);
        // token files: a wrong header, an odd byte count
        Path header = tmp.resolve("bad.bin"), odd = tmp.resolve("odd.bin");
        byte[] bytes = new byte[1024 + 40];
        Files.write(header, bytes);
        java.nio.ByteBuffer bb = java.nio.ByteBuffer.allocate(1024 + 41).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        bb.putInt(20240520).putInt(1).putInt(20);
        Files.write(odd, bb.array());
        assertBadInput(run("train", "--model", gpt2, "--data", "tokens:" + header, "--seq-len", "8", "--out", out.toString()), header.toString(), out);
        assertBadInput(run("train", "--model", gpt2, "--data", "tokens:" + odd, "--seq-len", "8", "--out", out.toString()), odd.toString(), out);
        // options that belong to the other kind of model, or are missing
        assertBadInput(run("train", "--model", gpt2, "--data", "tokens:" + train, "--out", out.toString()), "--seq-len", out);
        assertBadInput(run("distill", "--teacher", gpt2, "--teacher-weights", "w.safetensors", "--student", gpt2, "--data", "tokens:" + train, "--seq-len", "8",
            "--out", out.toString()), "--teacher-weights", out);
        assertBadInput(run("distill", "--teacher", gpt2, "--student-init", "teacher-layers:0,5", "--data", "tokens:" + train, "--seq-len", "8", "--out",
            out.toString()), "layer 5 is outside", out);
        assertFalse(Files.exists(out), "no output folder after refused runs");
    }
}
