package org.distill4j.core.tok;

import java.io.IOException;
import java.nio.file.Path;
import java.util.OptionalInt;

/**
 * A Hugging Face tokenizer ({@code tokenizer.json}): text to token ids and back, with the ids Hugging Face
 * {@code tokenizers} gives. Every tokenizer.json that library reads is supported (byte-level BPE as in GPT-2,
 * Llama 3 and Qwen; SentencePiece-style BPE with byte fallback as in Llama 2, Mistral and TinyLlama; WordPiece,
 * Unigram, ...), because the implementation is that library: {@link #open} returns {@link HfTokenizer}.
 * Instances are safe to use from several threads.
 */
public interface Tokenizer extends AutoCloseable {
    /** The ids of {@code text}, as {@code tokenizer.encode(text, add_special_tokens=False).ids}: no BOS, no EOS, no template. */
    int[] encode(String text);

    /**
     * The ids of {@code text} as {@code tokenizer(text)} gives them by default, add_special_tokens=True: the
     * tokenizer.json post-processor's template is applied (Llama 2/3, Mistral, TinyLlama prepend BOS; GPT-2 and Qwen
     * add nothing). What transformers feeds {@code generate} for a prompt.
     */
    int[] encodeWithSpecialTokens(String text);

    /**
     * The ids of each text, as {@code tokenizer.encode_batch(texts, add_special_tokens=False)}: the same ids as
     * {@link #encode} one by one, computed on all cores (Hugging Face's Rust thread pool).
     */
    int[][] encodeBatch(java.util.List<String> texts);

    /** The text of {@code ids}, as {@code tokenizer.decode(ids, skip_special_tokens=False)}. */
    String decode(int[] ids);

    /** The end-of-text token appended after each document ({@code <|endoftext|>}, {@code </s>}, ...), if the tokenizer has one. */
    OptionalInt eosId();

    /** One more than the largest id the tokenizer can produce (the model vocabulary, added tokens included). */
    int vocabSize();

    /** The id of a token string (a vocabulary entry or an added token), if there is one. */
    OptionalInt tokenId(String token);

    /** Where the tokenizer was read from (for messages). */
    Path source();

    @Override
    void close();

    /**
     * Opens {@code dirOrJson}: a tokenizer.json, or a folder holding one (a Hugging Face model folder); a folder's
     * tokenizer_config.json (or special_tokens_map.json) names the end-of-text token, as transformers reads it.
     *
     * @throws IllegalArgumentException when the path or the file is not a readable tokenizer (one line, naming it)
     */
    static Tokenizer open(Path dirOrJson) throws IOException {
        return HfTokenizer.open(dirOrJson);
    }
}
