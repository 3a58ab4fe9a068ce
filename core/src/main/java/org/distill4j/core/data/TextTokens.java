package org.distill4j.core.data;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.List;
import org.distill4j.core.tok.Tokenizer;

/**
 * {@code --data text:FILE[,FILE...] --tokenizer DIR}: text files tokenised once into an llm.c token file cached beside
 * the first one, {@code FIRST.<fingerprint>.tokens.bin}, then read as {@link TokenWindows}. Each file is one document
 * followed by the end-of-text token, exactly as {@code distill tokenize} writes them. The fingerprint is the first
 * 16 hex digits of SHA-256 over the tokenizer.json bytes and every file's name and bytes, so a changed text or tokenizer
 * makes a new cache file and an unchanged one is reused; the cache is written atomically.
 */
public final class TextTokens {
    private TextTokens() {}

    /** The cache file for {@code files} under {@code tokenizer}, tokenising them first when it does not exist yet. */
    public static Path cache(List<Path> files, Tokenizer tokenizer) throws IOException {
        if (files.isEmpty()) throw new IllegalArgumentException("data text: needs at least one text file");
        MessageDigest sha;
        try {
            sha = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
        sha.update(Files.readAllBytes(tokenizer.source()));
        for (Path f : files) {
            sha.update(f.getFileName().toString().getBytes(StandardCharsets.UTF_8));
            sha.update(read(f));
        }
        String fingerprint = HexFormat.of().formatHex(sha.digest()).substring(0, 16);
        Path first = files.getFirst().toAbsolutePath();
        Path cache = first.resolveSibling(first.getFileName() + "." + fingerprint + ".tokens.bin");
        if (Files.isRegularFile(cache)) return cache;
        try (TokenFile.Writer w = new TokenFile.Writer(cache, tokenizer.vocabSize())) {
            for (Path f : files) {
                w.write(tokenizer.encode(utf8(f, read(f))));
                if (tokenizer.eosId().isPresent()) w.write(tokenizer.eosId().getAsInt());
            }
            w.commit();
        }
        return cache;
    }

    /** {@code text:FILE[,FILE...]} with a tokenizer: the cached token file ({@link #cache}) as windows of {@code seqLen}. */
    public static TokenWindows open(String spec, Tokenizer tokenizer, Integer seqLen, int vocabSize) throws IOException {
        if (!spec.startsWith("text:")) throw new IllegalArgumentException("data '" + spec + "': expected text:FILE[,FILE...]");
        if (tokenizer == null) throw new IllegalArgumentException("data '" + spec + "': text data needs --tokenizer DIR|tokenizer.json");
        if (seqLen == null) throw new IllegalArgumentException("data '" + spec + "': text data needs --seq-len T (tokens per training window)");
        List<Path> files = java.util.Arrays.stream(spec.substring(5).split(",")).filter(s -> !s.isBlank()).map(Path::of).toList();
        return TokenWindows.open(cache(files, tokenizer), seqLen, vocabSize);
    }

    private static byte[] read(Path f) throws IOException {
        try {
            return Files.readAllBytes(f);
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException("text " + f + ": no such file");
        }
    }

    private static String utf8(Path f, byte[] bytes) {
        try {
            return StandardCharsets.UTF_8.newDecoder().decode(ByteBuffer.wrap(bytes)).toString();
        } catch (CharacterCodingException e) {
            throw new IllegalArgumentException("text " + f + ": not valid UTF-8");
        }
    }
}
