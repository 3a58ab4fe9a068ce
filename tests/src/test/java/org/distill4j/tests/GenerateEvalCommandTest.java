package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.distill4j.cli.Main;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Npy;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.tok.StreamingDecoder;
import org.distill4j.core.tok.Tokenizer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code distill generate} and {@code distill eval --data tokens:FILE} on the decoder fixtures (fixtures/lm): greedy
 * generation against the argmax of a full forward per step, seeded sampling, streamed multi-byte text, and the
 * windowed next-token loss against transformers' logits and against a direct computation in double.
 */
class GenerateEvalCommandTest {
    @TempDir
    Path tmp;

    private static final Path FIXTURES = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures").normalize();
    private static final Path LM = FIXTURES.resolve("lm"), TOK = FIXTURES.resolve("tok");

    private static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    /** The continuation greedy decoding must give: at each step the argmax of the last row of a full forward (no cache) of everything so far. */
    private static List<Long> greedyReference(Path dir, long[] prompt, int maxNew, long eos) throws Exception {
        List<Long> seq = new ArrayList<>();
        for (long id : prompt) seq.add(id);
        List<Long> out = new ArrayList<>();
        try (DecoderModel m = DecoderModel.load(CpuBackend.get(), dir)) {
            long v = m.config().vocab();
            for (int n = 0; n < maxNew; n++) {
                long[] ids = seq.stream().mapToLong(Long::longValue).toArray();
                long next;
                try (Arena arena = Arena.ofShared()) {
                    float[] logits = m.forward(new Layer.Pass(CpuBackend.get(), arena, false, 0, 0), ids, 1, ids.length, null, null, null).toFloatArray();
                    next = 0;
                    int base = (int) ((ids.length - 1) * v);
                    for (int c = 1; c < v; c++) if (logits[base + c] > logits[base + (int) next]) next = c;
                }
                if (next == eos) break;
                out.add(next);
                seq.add(next);
            }
        }
        return out;
    }

    private static List<Long> ids(String stdout) {
        List<Long> out = new ArrayList<>();
        for (String s : stdout.strip().split("\\s+")) if (!s.isEmpty()) out.add(Long.parseLong(s));
        return out;
    }

    @Test
    void greedyPromptIdsEqualArgmaxOfTheFullForwardStepByStep() throws Exception {
        // gpt2 (learned positions, eos 127) and qwen3 (RoPE, q/k norms, eos 2)
        Object[][] cases = {{"gpt2", new long[] {94, 23, 29, 115}, 127L}, {"qwen3", new long[] {61, 54, 23}, 2L}};
        for (Object[] c : cases) {
            Path dir = LM.resolve((String) c[0]);
            long[] prompt = (long[]) c[1];
            String csv = String.join(",", Arrays.stream(prompt).mapToObj(Long::toString).toList());
            String[] r = run("generate", "--model", dir.toString(), "--prompt-ids", csv, "--max-new-tokens", "20");
            assertEquals("0", r[0], r[2]);
            List<Long> want = greedyReference(dir, prompt, 20, (long) c[2]);
            assertEquals(want, ids(r[1]), c[0] + ": " + r[2]);
            assertTrue(want.size() >= 5, c[0] + ": the fixture should generate a few tokens before end-of-text: " + want);
            assertTrue(r[2].contains("generate: " + prompt.length + " prompt tokens + " + want.size() + " new"), r[2]);
        }
    }

    /**
     * A WordLevel tokenizer over the gpt2 fixture's 128 ids ("w0" .. "w126", and "<|endoftext|>" = 127, the model's
     * eos): whitespace-split words, decoded joined by spaces (no decoder), so the printed text maps back to ids.
     */
    private Path wordLevelTokenizer() throws Exception {
        return wordLevelTokenizer("null", "tokenizer.json");
    }

    private Path wordLevelTokenizer(String postProcessor, String name) throws Exception {
        StringBuilder vocab = new StringBuilder();
        for (int i = 0; i < 127; i++) vocab.append('"').append('w').append(i).append("\": ").append(i).append(", ");
        vocab.append("\"<|endoftext|>\": 127");
        String json = "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [{\"id\": 127, \"content\": \"<|endoftext|>\", "
            + "\"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}], \"normalizer\": null, "
            + "\"pre_tokenizer\": {\"type\": \"WhitespaceSplit\"}, \"post_processor\": " + postProcessor + ", \"decoder\": null, "
            + "\"model\": {\"type\": \"WordLevel\", \"vocab\": {" + vocab + "}, \"unk_token\": \"w0\"}}";
        Path f = tmp.resolve(name);
        Files.writeString(f, json);
        return f;
    }

    @Test
    void greedyTextPromptGoesThroughTheTokenizer() throws Exception {
        Path tok = wordLevelTokenizer(), dir = LM.resolve("gpt2");
        String[] r = run("generate", "--model", dir.toString(), "--tokenizer", tok.toString(), "--prompt", "w94 w23 w29 w115", "--max-new-tokens", "20");
        assertEquals("0", r[0], r[2]);
        List<Long> got = new ArrayList<>();
        for (String w : r[1].strip().split(" ")) {
            assertTrue(w.matches("w[0-9]+"), "word '" + w + "' in " + r[1]);
            got.add(Long.parseLong(w.substring(1)));
        }
        assertEquals(greedyReference(dir, new long[] {94, 23, 29, 115}, 20, 127), got, r[1]);
        // A folder holding the tokenizer.json is used without --tokenizer.
        Path copy = tmp.resolve("gpt2-with-tokenizer");
        Files.createDirectories(copy);
        for (String f : new String[] {"config.json", "generation_config.json", "model.safetensors"}) Files.copy(dir.resolve(f), copy.resolve(f));
        Files.copy(tok, copy.resolve("tokenizer.json"));
        String[] again = run("generate", "--model", copy.toString(), "--prompt", "w94 w23 w29 w115", "--max-new-tokens", "20");
        assertEquals("0", again[0], again[2]);
        assertEquals(r[1], again[1]);
    }

    /**
     * A Llama-style template that prepends a BOS ("w1" here): the prompt's ids are tokenizer(prompt) with
     * add_special_tokens=True, as transformers hands generate() (Python tokenizers gives [1, 94, 23] for "w94 w23").
     */
    @Test
    void aTemplateBosIsPrependedToTheTextPrompt() throws Exception {
        Path tok = wordLevelTokenizer("{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"w1\", \"type_id\": 0}}, "
            + "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, "
            + "{\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}], \"special_tokens\": {\"w1\": {\"id\": \"w1\", \"ids\": [1], \"tokens\": [\"w1\"]}}}",
            "bos-tokenizer.json");
        try (Tokenizer t = Tokenizer.open(tok)) {
            assertEquals(List.of(1, 94, 23), Arrays.stream(t.encodeWithSpecialTokens("w94 w23")).boxed().toList());
            assertEquals(List.of(94, 23), Arrays.stream(t.encode("w94 w23")).boxed().toList());
        }
        Path dir = LM.resolve("gpt2");
        String[] r = run("generate", "--model", dir.toString(), "--tokenizer", tok.toString(), "--prompt", "w94 w23", "--max-new-tokens", "12");
        assertEquals("0", r[0], r[2]);
        String[] ids = run("generate", "--model", dir.toString(), "--prompt-ids", "1,94,23", "--max-new-tokens", "12");
        List<Long> got = new ArrayList<>();
        for (String w : r[1].strip().split(" ")) got.add(Long.parseLong(w.substring(1)));
        assertEquals(ids(ids[1]), got);
        assertTrue(r[2].contains("generate: 3 prompt tokens"), r[2]);
    }

    @Test
    void samplingIsReproducibleForASeed() {
        String dir = LM.resolve("gpt2").toString();
        String[] a = run("generate", "--model", dir, "--prompt-ids", "4,89,110", "--max-new-tokens", "30", "--temperature", "1.5", "--top-k", "50", "--seed", "7");
        String[] b = run("generate", "--model", dir, "--prompt-ids", "4,89,110", "--max-new-tokens", "30", "--temperature", "1.5", "--top-k", "50", "--seed", "7");
        String[] c = run("generate", "--model", dir, "--prompt-ids", "4,89,110", "--max-new-tokens", "30", "--temperature", "1.5", "--top-k", "50", "--seed", "8");
        String[] g = run("generate", "--model", dir, "--prompt-ids", "4,89,110", "--max-new-tokens", "30");
        for (String[] r : new String[][] {a, b, c, g}) assertEquals("0", r[0], r[2]);
        assertEquals(a[1], b[1]);
        assertTrue(ids(a[1]).size() >= 3, a[1]);
        assertNotEquals(a[1], c[1], "seeds 7 and 8 gave the same sample");
        assertNotEquals(a[1], g[1], "the sample equals the greedy continuation");
        // top-k 1 is greedy whatever the temperature and seed
        String[] k1 = run("generate", "--model", dir, "--prompt-ids", "4,89,110", "--max-new-tokens", "30", "--temperature", "3", "--top-k", "1", "--seed", "5");
        assertEquals(g[1], k1[1]);
    }

    /** Multi-byte characters spread over GPT-2 byte-level tokens are printed once complete: the pieces join to the whole decode, none holds U+FFFD. */
    @Test
    void streamedTextHoldsBackIncompleteCharacters() throws Exception {
        String text = "Moby 日本語 café 🐋 whale — “done”";
        try (Tokenizer tok = Tokenizer.open(TOK.resolve("gpt2/tokenizer.json"))) {
            int[] ids = tok.encode(text);
            assertTrue(ids.length > text.split(" ").length, "some characters take several tokens");
            var stream = new StreamingDecoder(tok);
            StringBuilder printed = new StringBuilder();
            int partial = 0;
            for (int id : ids) {
                String piece = stream.append(id);
                assertFalse(piece.contains("\uFFFD"), "printed an incomplete character: " + piece);
                if (piece.isEmpty()) partial++;
                printed.append(piece);
            }
            printed.append(stream.finish());
            assertEquals(text, printed.toString());
            assertTrue(partial > 0, "no token ended mid-character: the test does not exercise the hold-back");
            assertEquals(0, tok.encodeWithSpecialTokens(text).length - ids.length, "GPT-2's template adds no special tokens");
        }
    }

    @Test
    void generateBadInputIsOneLineExitTwo() throws Exception {
        String gpt2 = LM.resolve("gpt2").toString(), tok = wordLevelTokenizer().toString();
        String[][] cases = {
            {"no tokenizer.json", "generate", "--model", gpt2, "--prompt", "hello", "--max-new-tokens", "5"},
            {"n_positions", "generate", "--model", gpt2, "--prompt-ids", "1,2,3,4", "--max-new-tokens", "61"},
            {"max_position_embeddings", "generate", "--model", LM.resolve("qwen3").toString(), "--prompt-ids", "1,2", "--max-new-tokens", "63"},
            {"outside the vocabulary", "generate", "--model", gpt2, "--prompt-ids", "1,128", "--max-new-tokens", "5"},
            {"exactly one of", "generate", "--model", gpt2, "--tokenizer", tok, "--prompt", "w1", "--prompt-ids", "1", "--max-new-tokens", "5"},
            {"--temperature", "generate", "--model", gpt2, "--prompt-ids", "1", "--max-new-tokens", "5", "--temperature", "-1"},
            {"more than the vocabulary", "generate", "--model", LM.resolve("qwen3").toString(), "--tokenizer", tok, "--prompt", "w1", "--max-new-tokens", "5"},
        };
        for (String[] c : cases) {
            String[] r = run(Arrays.copyOfRange(c, 1, c.length));
            assertEquals("2", r[0], c[0] + " -> " + r[2]);
            assertEquals(1, r[2].strip().lines().count(), r[2]);
            assertTrue(r[2].contains(c[0]), "'" + c[0] + "' not in " + r[2]);
        }
        // 60 + 4 = 64 = n_positions fits
        String[] fits = run("generate", "--model", gpt2, "--prompt-ids", "1,2,3,4", "--max-new-tokens", "60");
        assertEquals("0", fits[0], fits[2]);
    }

    private static double parseLoss(String stdout, long tokens) {
        String last = stdout.strip().lines().reduce((a, b) -> b).orElseThrow();
        assertTrue(last.matches("eval: loss [0-9.]+, perplexity [0-9.]+, tokens " + tokens), last);
        double loss = Double.parseDouble(last.substring("eval: loss ".length(), last.indexOf(',')));
        double ppl = Double.parseDouble(last.substring(last.indexOf("perplexity ") + 11, last.lastIndexOf(',')));
        assertEquals(Math.exp(loss), ppl, 1e-3 * ppl);
        return loss;
    }

    /** One window over a fixture row: the mean -log softmax at the 7 targets, from transformers' own logits (reference.safetensors), in double. */
    @Test
    void evalMatchesTransformersLogitsOnAWindow() throws Exception {
        for (String model : new String[] {"gpt2", "qwen3"}) {
            Path dir = LM.resolve(model);
            long[] ids;
            float[] logits;
            long v;
            try (Safetensors st = Safetensors.open(dir.resolve("reference.safetensors"));
                 Tensor i = CpuBackend.get().empty(DType.I64, st.entries().get("input_ids").shape());
                 Tensor l = CpuBackend.get().empty(DType.F32, st.entries().get("logits").shape())) {
                st.copyInto("input_ids", i);
                st.copyInto("logits", l);
                ids = Arrays.copyOf(i.toLongArray(), 8); // row 0: [2, 8]
                logits = l.toFloatArray();
                v = l.size(2);
            }
            Path file = tmp.resolve(model + ".npy");
            Npy.writeLongs(file, ids, ids.length);
            double sum = 0;
            for (int t = 0; t < 7; t++) sum += negLogSoftmax(logits, t * v, v, ids[t + 1]);
            String[] r = run("eval", "--model", dir.toString(), "--data", "tokens:" + file, "--seq-len", "7");
            assertEquals("0", r[0], r[2]);
            assertEquals(sum / 7, parseLoss(r[1], 7), 2e-5, model);
        }
    }

    private static double negLogSoftmax(float[] logits, long base, long v, long target) {
        double max = Double.NEGATIVE_INFINITY, z = 0;
        for (long c = 0; c < v; c++) max = Math.max(max, logits[(int) (base + c)]);
        for (long c = 0; c < v; c++) z += Math.exp(logits[(int) (base + c)] - max);
        return max + Math.log(z) - logits[(int) (base + target)];
    }

    /**
     * Windows of T + 1 tokens every T, a partial last window dropped, batched (a last smaller batch too): the mean over
     * windows * T targets of a direct computation, each window forwarded alone by the library model and scored in double.
     */
    @Test
    void evalMeansEveryTargetOfEveryWindow() throws Exception {
        long seed = TestSeeds.seed(GenerateEvalCommandTest.class);
        SplittableRandom rng = new SplittableRandom(seed);
        int t = 9, windows = 5;
        long[] tokens = new long[windows * t + 1 + 4]; // 4 tokens of a partial window, dropped
        for (int i = 0; i < tokens.length; i++) tokens[i] = rng.nextInt(128);
        Path file = tmp.resolve("tokens.npy");
        Npy.writeLongs(file, tokens, tokens.length);
        Path dir = LM.resolve("gpt2");
        double sum = 0;
        try (DecoderModel m = DecoderModel.load(CpuBackend.get(), dir)) {
            for (int w = 0; w < windows; w++) {
                long[] in = Arrays.copyOfRange(tokens, w * t, w * t + t);
                try (Arena arena = Arena.ofShared()) {
                    float[] logits = m.forward(new Layer.Pass(CpuBackend.get(), arena, false, 0, 0), in, 1, t, null, null, null).toFloatArray();
                    for (int i = 0; i < t; i++) sum += negLogSoftmax(logits, (long) i * 128, 128, tokens[w * t + i + 1]);
                }
            }
        }
        double want = sum / (windows * t);
        for (String batch : new String[] {"1", "2", "8"}) {
            String[] r = run("eval", "--model", dir.toString(), "--data", "tokens:" + file, "--seq-len", String.valueOf(t), "--batch", batch);
            assertEquals("0", r[0], r[2]);
            assertEquals(want, parseLoss(r[1], (long) windows * t), 1e-5, "--batch " + batch);
        }
    }

    @Test
    void evalBadInputIsOneLineExitTwo() throws Exception {
        Path ok = tmp.resolve("ok.npy"), oov = tmp.resolve("oov.npy"), badHeader = tmp.resolve("bad.bin"), odd = tmp.resolve("odd.bin");
        long[] tokens = new long[100];
        Npy.writeLongs(ok, tokens, tokens.length);
        Path tiny = tmp.resolve("tiny.npy");
        Npy.writeLongs(tiny, new long[5], 5);
        tokens[57] = 128;
        Npy.writeLongs(oov, tokens, tokens.length);
        Files.write(badHeader, new byte[1024 + 20]);
        java.nio.ByteBuffer h = java.nio.ByteBuffer.allocate(1024 + 21).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        h.putInt(20240520).putInt(1).putInt(10);
        Files.write(odd, h.array());
        String gpt2 = LM.resolve("gpt2").toString();
        String[][] cases = {
            {"outside the model's vocabulary", gpt2, "tokens:" + oov, "8"},
            {"n_positions", gpt2, "tokens:" + ok, "65"},
            {"max_position_embeddings", LM.resolve("qwen3").toString(), "tokens:" + ok, "65"},
            {badHeader.toString(), gpt2, "tokens:" + badHeader, "8"},
            {odd.toString(), gpt2, "tokens:" + odd, "8"},
            {"no window", gpt2, "tokens:" + tiny, "8"},
            {"tokens:FILE", gpt2, "npy:" + ok, "8"},
        };
        for (String[] c : cases) {
            String[] r = run("eval", "--model", c[1], "--data", c[2], "--seq-len", c[3]);
            assertEquals("2", r[0], c[0] + " -> " + r[2]);
            assertEquals(1, r[2].strip().lines().count(), r[2]);
            assertTrue(r[2].contains(c[0]), "'" + c[0] + "' not in " + r[2]);
        }
        String[] noSeqLen = run("eval", "--model", gpt2, "--data", "tokens:" + ok);
        assertEquals("2", noSeqLen[0], noSeqLen[2]);
        assertTrue(noSeqLen[2].contains("--seq-len"), noSeqLen[2]);
    }
}
