package org.distill4j.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.distill4j.core.data.TokenFile;
import org.distill4j.core.tok.Tokenizer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

/**
 * {@code distill tokenize}: text files to one token file, with the ids of Hugging Face {@code tokenizers}. Each file
 * is one document: the ids of its whole text (UTF-8, as is: no newline translation) with add_special_tokens=False,
 * then the end-of-text token unless {@code --no-eos}. Files are encoded on several threads and written in order.
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
    @Option(names = "--tokenizer", required = true, paramLabel = "DIR|tokenizer.json",
        description = "a tokenizer.json, or a Hugging Face folder holding one (its tokenizer_config.json names the end-of-text token)")
    Path tokenizer;
    @Option(names = "--output", required = true, paramLabel = "OUT.bin|OUT.npy", description = "the token file to write") Path output;
    @Option(names = "--no-eos", description = "do not append the end-of-text token after each document") boolean noEos;
    @Option(names = "--threads", paramLabel = "N", description = "files encoded at once (default: the number of cores)") Integer threads;
    @Parameters(arity = "1..*", paramLabel = "FILE", description = "text files (UTF-8), one document each") List<Path> files;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        int workers = threads == null ? Runtime.getRuntime().availableProcessors() : threads;
        if (workers < 1) throw new IllegalArgumentException("--threads must be >= 1, got " + workers);
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
            ExecutorService pool = Executors.newFixedThreadPool(workers, Thread.ofPlatform().daemon().name("distill4j-tokenize-", 0).factory());
            try (TokenFile.Writer writer = new TokenFile.Writer(output, tok.vocabSize())) {
                ArrayDeque<Future<int[]>> inFlight = new ArrayDeque<>();
                int next = 0;
                for (int done = 0; done < files.size(); done++) {
                    while (next < files.size() && inFlight.size() < 2 * workers) {
                        Path f = files.get(next++);
                        inFlight.add(pool.submit(() -> tok.encode(readUtf8(f))));
                    }
                    int[] ids = await(inFlight.poll());
                    writer.write(ids);
                    if (!noEos && tok.eosId().isPresent()) writer.write(tok.eosId().getAsInt());
                    bytesDone += Files.size(files.get(done));
                    double s = (System.nanoTime() - started) / 1e9;
                    progress.show(String.format("tokenize %s %d/%d files  %,d tokens  %,.0f tokens/s", ProgressLine.bar(bytesDone, totalBytes, 24), done + 1,
                        files.size(), writer.count(), writer.count() / Math.max(s, 1e-9)), done + 1 == files.size());
                }
                writer.commit();
                progress.clear();
                double s = (System.nanoTime() - started) / 1e9;
                String layout = TokenFile.formatOf(output) == TokenFile.Format.LLMC_BIN
                    ? "llm.c .bin version " + (writer.element() == TokenFile.Element.UINT16 ? "1, uint16" : "2, uint32") : ".npy " + writer.element().descr;
                out.printf("tokenize: %d file(s), %,d bytes -> %,d tokens (vocabulary %,d%s) in %s (%s), %.2f s, %,.0f tokens/s%n", files.size(), totalBytes,
                    writer.count(), tok.vocabSize(), noEos || tok.eosId().isEmpty() ? ", no end-of-text token" : ", end-of-text id " + tok.eosId().getAsInt(),
                    output, layout, s, writer.count() / Math.max(s, 1e-9));
            } finally {
                pool.shutdownNow();
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

    private static int[] await(Future<int[]> f) throws Exception {
        try {
            return f.get();
        } catch (ExecutionException e) {
            if (e.getCause() instanceof Exception cause) throw cause;
            throw e;
        }
    }
}
