package org.distill4j.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import org.distill4j.core.data.TokenFile;
import org.distill4j.core.tok.Tokenizer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

/**
 * {@code distill tokenize}: text files to one token file, with the ids of Hugging Face {@code tokenizers}. Each file
 * is one document: the ids of its whole text (UTF-8, as is: no newline translation) with add_special_tokens=False,
 * then the end-of-text token unless {@code --no-eos}. Groups of files are encoded on all cores (Hugging Face's
 * encode_batch) and written in order.
 */
@Command(name = "tokenize", mixinStandardHelpOptions = true,
    description = {"Tokenises text files into one token file (llm.c .bin or 1-D .npy)",
        "with a Hugging Face tokenizer.json. Each FILE is one document: the ids",
        "Hugging Face tokenizers gives for its whole UTF-8 text with",
        "add_special_tokens=False, then one end-of-text token if the tokenizer",
        "has one (a folder's tokenizer_config.json eos_token, else <|endoftext|>,",
        "</s>, ...)."},
    footer = {"", "Output (by the name's extension; written to a temporary file, renamed when complete):",
        "  .bin  llm.c's token file: 256 little-endian int32 (20240520, version,",
        "        token count, zeros), then the tokens: version 1 with uint16 tokens",
        "        when the vocabulary fits 16 bits (<= 65,536 ids; what llm.c reads),",
        "        else version 2 with uint32 tokens (our extension: llm.c's own",
        "        loader reads version 1 only).",
        "  .npy  a 1-D array: uint16 when the vocabulary fits 16 bits, else int32.",
        "", "Examples:",
        "  distill tokenize --tokenizer gpt2/ --output train.bin book1.txt book2.txt",
        "  distill tokenize --tokenizer tokenizer.json --no-eos --output val.npy val.txt"})
final class TokenizeCommand implements Callable<Integer> {
    /** Text handed to one encode_batch call, at most (one larger file goes alone): bounds the memory of a group. */
    static final long BATCH_BYTES = 64L << 20;

    @Option(names = "--tokenizer", required = true, paramLabel = "DIR|tokenizer.json",
        description = "a tokenizer.json, or a Hugging Face folder holding one (its tokenizer_config.json names the end-of-text token)")
    Path tokenizer;
    @Option(names = "--output", required = true, paramLabel = "OUT.bin|OUT.npy", description = "the token file to write") Path output;
    @Option(names = "--no-eos", description = "do not append the end-of-text token after each document") boolean noEos;
    @Parameters(arity = "1..*", paramLabel = "FILE", description = "text files (UTF-8), one document each") List<Path> files;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        TokenFile.formatOf(output); // .bin or .npy, checked before any work
        long totalBytes = 0;
        for (Path f : files) {
            if (!Files.isRegularFile(f)) throw new IllegalArgumentException("input " + f + ": no such file");
            totalBytes += Files.size(f);
        }
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        ProgressLine progress = ProgressLine.forTerminal(err);
        try (Tokenizer tok = Tokenizer.open(tokenizer)) {
            if (!noEos && tok.eosId().isEmpty()) {
                err.println("tokenize: " + tok.source() + " has no end-of-text token; documents follow each other without a separator");
            }
            long started = System.nanoTime(), bytesDone = 0;
            try (TokenFile.Writer writer = new TokenFile.Writer(output, tok.vocabSize())) {
                // Files go to Hugging Face's encode_batch in groups of up to BATCH_BYTES of text: its Rust thread pool
                // spreads a group over the cores, and the ids are written in the order the files were given.
                for (int first = 0; first < files.size(); ) {
                    List<String> texts = new ArrayList<>();
                    long groupBytes = 0;
                    int end = first;
                    while (end < files.size() && (end == first || groupBytes + Files.size(files.get(end)) <= BATCH_BYTES)) {
                        groupBytes += Files.size(files.get(end));
                        texts.add(readUtf8(files.get(end++)));
                    }
                    int[][] ids = texts.size() == 1 ? new int[][] {tok.encode(texts.getFirst())} : tok.encodeBatch(texts);
                    for (int[] document : ids) {
                        writer.write(document);
                        if (!noEos && tok.eosId().isPresent()) writer.write(tok.eosId().getAsInt());
                    }
                    bytesDone += groupBytes;
                    first = end;
                    double s = (System.nanoTime() - started) / 1e9;
                    progress.show(String.format("tokenize %s %d/%d files  %,d tokens  %,.0f tokens/s", ProgressLine.bar(bytesDone, totalBytes, 24), end,
                        files.size(), writer.count(), writer.count() / Math.max(s, 1e-9)), end == files.size());
                }
                writer.commit();
                progress.clear();
                double s = (System.nanoTime() - started) / 1e9;
                String layout = TokenFile.formatOf(output) == TokenFile.Format.LLMC_BIN
                    ? "llm.c .bin version " + (writer.element() == TokenFile.Element.UINT16 ? "1, uint16" : "2, uint32") : ".npy " + writer.element().descr;
                out.printf("tokenize: %d file(s), %,d bytes -> %,d tokens (vocabulary %,d%s) in %s (%s), %.2f s, %,.0f tokens/s%n", files.size(), totalBytes,
                    writer.count(), tok.vocabSize(), noEos || tok.eosId().isEmpty() ? ", no end-of-text token" : ", end-of-text id " + tok.eosId().getAsInt(),
                    output, layout, s, writer.count() / Math.max(s, 1e-9));
            }
        }
        return 0;
    }

    private static String readUtf8(Path f) throws IOException {
        try {
            return StandardCharsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(Files.readAllBytes(f))).toString();
        } catch (CharacterCodingException e) {
            throw new IllegalArgumentException("input " + f + ": not valid UTF-8 text");
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException("input " + f + ": no such file");
        }
    }
}
