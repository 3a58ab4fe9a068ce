package org.distill4j.core.data;

import java.io.IOException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

/**
 * The one data syntax every command uses (docs/data.md):
 * <ul>
 *   <li>{@code idx:IMAGES,LABELS} MNIST-style IDX files;</li>
 *   <li>{@code cifar10:BATCH[,BATCH...]} CIFAR-10 binary batches;</li>
 *   <li>{@code npy:SAMPLES.npy,LABELS.npy} float32 samples [N, ...] and integer labels [N];</li>
 *   <li>{@code tokens:FILE} a token stream (llm.c .bin or 1-D .npy) cut into next-token windows of
 *       {@code --seq-len} tokens, for decoder models ({@link #openTokens}, {@link TokenWindows}).</li>
 * </ul>
 * {@link #open} gives the labelled datasets of classification models and refuses token data, which only a decoder
 * takes.
 */
public final class DataSpec {
    private DataSpec() {}

    public static Dataset open(String spec) throws IOException {
        int colon = spec.indexOf(':');
        if (colon < 0) throw new IllegalArgumentException("data '" + spec + "': expected idx:IMAGES,LABELS, cifar10:FILE[,FILE...], npy:X.npy,Y.npy or tokens:FILE");
        String kind = spec.substring(0, colon);
        List<Path> files = Arrays.stream(spec.substring(colon + 1).split(",")).filter(s -> !s.isBlank()).map(Path::of).toList();
        return switch (kind) {
            case "idx" -> {
                if (files.size() != 2) throw new IllegalArgumentException("data '" + spec + "': idx needs two files, IMAGES,LABELS");
                yield ByteImageDataset.idx(files.get(0), files.get(1));
            }
            case "npy" -> {
                if (files.size() != 2) throw new IllegalArgumentException("data '" + spec + "': npy needs two files, SAMPLES.npy,LABELS.npy");
                yield ArrayDataset.npy(files.get(0), files.get(1));
            }
            case "cifar10" -> {
                if (files.isEmpty()) throw new IllegalArgumentException("data '" + spec + "': cifar10 needs at least one batch file");
                yield ByteImageDataset.cifar10(files);
            }
            case "tokens" -> throw new IllegalArgumentException("data '" + spec + "': token data needs a decoder model (a Hugging Face folder);"
                + " a model spec (MLP/CNN) takes idx:, cifar10: or npy: data");
            default -> throw new IllegalArgumentException("data '" + spec + "': unknown kind '" + kind + "' (idx, cifar10, npy or tokens)");
        };
    }

    /** Whether {@code spec} names token data ({@code tokens:FILE}). */
    public static boolean isTokens(String spec) {
        return spec != null && spec.startsWith("tokens:");
    }

    /**
     * Opens {@code tokens:FILE} as next-token windows of {@code seqLen} tokens (null: --seq-len was not given), with
     * every id checked against {@code vocabSize} when it is positive.
     *
     * @throws IllegalArgumentException one line: not token data, no --seq-len, or a bad file (see {@link TokenWindows#open})
     */
    public static TokenWindows openTokens(String spec, Integer seqLen, int vocabSize) throws IOException {
        if (!isTokens(spec)) throw new IllegalArgumentException("data '" + spec + "': a decoder takes token data, tokens:FILE (llm.c .bin or 1-D .npy)");
        String file = spec.substring("tokens:".length());
        if (file.isBlank() || file.contains(",")) throw new IllegalArgumentException("data '" + spec + "': tokens needs exactly one file, tokens:FILE");
        if (seqLen == null) throw new IllegalArgumentException("data '" + spec + "': token data needs --seq-len T (tokens per training window)");
        return TokenWindows.open(Path.of(file), seqLen, vocabSize);
    }
}
