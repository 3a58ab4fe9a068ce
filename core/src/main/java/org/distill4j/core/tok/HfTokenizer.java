package org.distill4j.core.tok;

import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import ai.djl.huggingface.tokenizers.jni.TokenizersLibrary;
import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalInt;

/**
 * {@link Tokenizer} over Hugging Face's Rust {@code tokenizers} through DJL's JNI binding
 * ({@code ai.djl.huggingface:tokenizers}). The ids are that library's, so they equal Python's {@code tokenizers}
 * for every tokenizer.json (fixtures/tok checks GPT-2 and two SentencePiece-style byte-fallback layouts).
 *
 * <p>What we read ourselves, with Jackson: the vocabulary size (largest id + 1 over the model's vocabulary and the
 * added tokens) and the end-of-text token, which the Rust library does not know about: transformers takes it from
 * tokenizer_config.json's {@code eos_token}; with only a tokenizer.json we look for the usual special tokens.
 *
 * <p>DJL is told to stay offline (its jar carries the natives for linux/macOS/windows x86_64 and aarch64; they are
 * extracted once to DJL's cache folder, {@code ~/.djl.ai} or {@code $DJL_CACHE_DIR}) and not to send its usage
 * telemetry; both only when the user has not set them.
 */
public final class HfTokenizer implements Tokenizer {
    /** End-of-text tokens in the order we try them when no tokenizer_config.json names one. */
    static final List<String> EOS_CANDIDATES = List.of("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>");

    private static final ObjectMapper JSON = new ObjectMapper();

    private final Path source;
    private final HuggingFaceTokenizer rust;
    private final Map<String, Integer> idsByToken;
    private final int vocabSize;
    private final OptionalInt eos;

    private HfTokenizer(Path source, HuggingFaceTokenizer rust, Map<String, Integer> idsByToken, int vocabSize, OptionalInt eos) {
        this.source = source;
        this.rust = rust;
        this.idsByToken = idsByToken;
        this.vocabSize = vocabSize;
        this.eos = eos;
    }

    public static HfTokenizer open(Path dirOrJson) throws IOException {
        Path json = Files.isDirectory(dirOrJson) ? dirOrJson.resolve("tokenizer.json") : dirOrJson;
        if (!Files.isRegularFile(json)) {
            throw new IllegalArgumentException("tokenizer " + dirOrJson + ": " + (Files.isDirectory(dirOrJson)
                ? "the folder has no tokenizer.json" : "no such file (expected a tokenizer.json or a folder holding one)"));
        }
        JsonNode spec;
        try {
            spec = JSON.readTree(json.toFile());
        } catch (JacksonException e) {
            throw new IllegalArgumentException("tokenizer " + json + ": not valid JSON (" + e.getOriginalMessage() + ")");
        }
        JsonNode model = spec.path("model");
        if (!model.isObject() || !model.path("vocab").isContainerNode()) {
            throw new IllegalArgumentException("tokenizer " + json + ": field 'model.vocab' missing (expected a Hugging Face tokenizer.json)");
        }
        Map<String, Integer> ids = new HashMap<>();
        JsonNode vocab = model.get("vocab");
        if (vocab.isObject()) {                       // BPE, WordPiece, WordLevel: {"token": id}
            vocab.properties().forEach(e -> ids.put(e.getKey(), e.getValue().asInt()));
        } else {                                      // Unigram: [["piece", score], ...], the id is the position
            for (int i = 0; i < vocab.size(); i++) ids.put(vocab.get(i).path(0).asText(), i);
        }
        Map<String, Integer> special = new HashMap<>();
        for (JsonNode added : spec.path("added_tokens")) {
            ids.put(added.path("content").asText(), added.path("id").asInt());
            if (added.path("special").asBoolean()) special.put(added.path("content").asText(), added.path("id").asInt());
        }
        int vocabSize = ids.values().stream().mapToInt(Integer::intValue).max().orElse(-1) + 1;
        OptionalInt eos = findEos(dirOrJson, json, ids, special);

        configureDjl();
        HuggingFaceTokenizer rust;
        try {
            rust = HuggingFaceTokenizer.builder().optTokenizerPath(json).optAddSpecialTokens(false)
                .optTruncation(false).optPadding(false).build();
        } catch (RuntimeException e) {
            // The Rust parser's message names the field and position ("unknown variant ... at line 1 column 345").
            throw new IllegalArgumentException("tokenizer " + json + ": Hugging Face tokenizers cannot read it ("
                + String.valueOf(e.getMessage()).lines().findFirst().orElse("") + ")");
        }
        return new HfTokenizer(json, rust, Map.copyOf(ids), vocabSize, eos);
    }

    /** transformers' rule: tokenizer_config.json's eos_token (a string or {"content": ...}), then special_tokens_map.json; else the usual names. */
    private static OptionalInt findEos(Path dirOrJson, Path json, Map<String, Integer> ids, Map<String, Integer> special) throws IOException {
        Path folder = Files.isDirectory(dirOrJson) ? dirOrJson : json.toAbsolutePath().getParent();
        for (String name : List.of("tokenizer_config.json", "special_tokens_map.json")) {
            Path config = folder.resolve(name);
            if (!Files.isRegularFile(config)) continue;
            JsonNode node;
            try {
                node = JSON.readTree(config.toFile()).path("eos_token");
            } catch (JacksonException e) {
                throw new IllegalArgumentException("tokenizer " + config + ": not valid JSON (" + e.getOriginalMessage() + ")");
            }
            String token = node.isObject() ? node.path("content").asText(null) : node.isTextual() ? node.asText() : null;
            if (token == null) continue;
            Integer id = ids.get(token);
            if (id == null) throw new IllegalArgumentException("tokenizer " + config + ": eos_token '" + token + "' is not in " + json);
            return OptionalInt.of(id);
        }
        for (String token : EOS_CANDIDATES) {
            Integer id = special.get(token);
            if (id != null) return OptionalInt.of(id);
        }
        return OptionalInt.empty();
    }

    /** No downloads (the natives come from the jar) and no telemetry, unless the user chose otherwise. */
    private static void configureDjl() {
        if (System.getProperty("ai.djl.offline") == null && System.getenv("DJL_OFFLINE") == null) System.setProperty("ai.djl.offline", "true");
        if (System.getProperty("OPT_OUT_TRACKING") == null && System.getenv("OPT_OUT_TRACKING") == null) System.setProperty("OPT_OUT_TRACKING", "true");
    }

    @Override
    public int[] encode(String text) {
        return encode(text, false);
    }

    @Override
    public int[] encodeWithSpecialTokens(String text) {
        return encode(text, true);
    }

    private int[] encode(String text, boolean addSpecialTokens) {
        // The binding's own encode(text) also copies out the token strings, offsets, type ids, masks and word ids
        // (one Java object per token for the strings and offsets); we need the ids only, so we call its JNI layer
        // (public: ai.djl.huggingface.tokenizers.jni) the same way and fetch just them.
        long encoding = TokenizersLibrary.LIB.encode(rust.getHandle(), text, addSpecialTokens);
        long[] ids;
        try {
            ids = TokenizersLibrary.LIB.getTokenIds(encoding);
        } finally {
            TokenizersLibrary.LIB.deleteEncoding(encoding);
        }
        int[] out = new int[ids.length];
        for (int i = 0; i < ids.length; i++) out[i] = Math.toIntExact(ids[i]);
        return out;
    }

    @Override
    public int[][] encodeBatch(List<String> texts) {
        long[] encodings = TokenizersLibrary.LIB.batchEncode(rust.getHandle(), texts.toArray(String[]::new), false);
        int[][] out = new int[encodings.length][];
        try {
            for (int t = 0; t < encodings.length; t++) {
                long[] ids = TokenizersLibrary.LIB.getTokenIds(encodings[t]);
                out[t] = new int[ids.length];
                for (int i = 0; i < ids.length; i++) out[t][i] = Math.toIntExact(ids[i]);
            }
        } finally {
            for (long e : encodings) TokenizersLibrary.LIB.deleteEncoding(e);
        }
        return out;
    }

    @Override
    public String decode(int[] ids) {
        long[] wide = new long[ids.length];
        for (int i = 0; i < ids.length; i++) wide[i] = ids[i];
        return rust.decode(wide, false);
    }

    @Override
    public OptionalInt eosId() {
        return eos;
    }

    @Override
    public int vocabSize() {
        return vocabSize;
    }

    @Override
    public OptionalInt tokenId(String token) {
        Integer id = idsByToken.get(token);
        return id == null ? OptionalInt.empty() : OptionalInt.of(id);
    }

    @Override
    public Path source() {
        return source;
    }

    @Override
    public void close() {
        rust.close();
    }
}
