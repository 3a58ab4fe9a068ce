package org.distill4j.core.tok;

import java.util.ArrayList;
import java.util.List;

/**
 * Incremental detokenisation for printing generated text as it comes: the whole id list is decoded at each step and
 * the new suffix returned, so a character spread over several byte-level tokens appears once complete. While the
 * text ends in U+FFFD (an incomplete UTF-8 sequence, as the decoder renders it) nothing is returned, as
 * transformers' TextStreamer waits too. Decoding everything each step costs O(n) per token: fine for the lengths a
 * model's context allows. Not thread-safe.
 */
public final class StreamingDecoder {
    private final Tokenizer tok;
    private final List<Integer> ids = new ArrayList<>();
    private int printed; // chars of the decoded text already returned

    public StreamingDecoder(Tokenizer tok) {
        this.tok = tok;
    }

    /** Adds a token; returns the text that became final (possibly empty). */
    public String append(int id) {
        ids.add(id);
        String text = decode();
        if (text.endsWith("\uFFFD")) return "";
        return suffix(text);
    }

    /** The rest of the text at the end (an incomplete sequence included, as U+FFFD). */
    public String finish() {
        return suffix(decode());
    }

    private String suffix(String text) {
        if (text.length() <= printed) return "";
        String s = text.substring(printed);
        printed = text.length();
        return s;
    }

    private String decode() {
        return tok.decode(ids.stream().mapToInt(Integer::intValue).toArray());
    }
}
