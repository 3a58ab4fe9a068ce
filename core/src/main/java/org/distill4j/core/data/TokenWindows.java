package org.distill4j.core.data;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;

/**
 * Next-token training windows over a memory-mapped token file ({@link TokenFile}: llm.c .bin or 1-D .npy), for
 * {@code --data tokens:FILE --seq-len T}. The stream is cut into windows of T+1 tokens starting every T tokens:
 * window i is tokens[i*T .. i*T+T] (inclusive), its first T tokens the inputs and its last T the targets, so
 * consecutive windows share one token and every token but the first is a target once. A last window without its
 * T+1 tokens is dropped: {@code windows = (count - 1) / T}.
 *
 * <p>A micro-batch is B windows in the epoch's order: each epoch is a Fisher-Yates permutation of the windows drawn
 * with Philox from (seed, epoch), the same rule as {@link DataLoader#order}, so runs and resumes are reproducible.
 * The tokens stay memory-mapped (never copied to the heap); {@link #batch} reads only the windows it is given.
 * Safe to read from several threads; {@link #close} unmaps.
 */
public final class TokenWindows implements AutoCloseable {
    private final TokenFile file;
    private final int seqLen;
    private final Arena arena;
    private final MemorySegment tokens; // count * element.bytes, little-endian
    private final long windows;

    private TokenWindows(TokenFile file, int seqLen, Arena arena, MemorySegment tokens) {
        this.file = file;
        this.seqLen = seqLen;
        this.arena = arena;
        this.tokens = tokens;
        this.windows = file.count() <= 1 ? 0 : (file.count() - 1) / seqLen;
    }

    /**
     * Maps {@code path} and checks it: the header ({@link TokenFile#open}), at least one window, and, when
     * {@code vocabSize > 0}, every id in [0, vocabSize) (one sequential pass over the file).
     *
     * @throws IllegalArgumentException one line naming the file: bad header, odd byte count, too few tokens, or an id
     *     outside the vocabulary (with its position)
     */
    public static TokenWindows open(Path path, int seqLen, int vocabSize) throws IOException {
        if (seqLen < 1) throw new IllegalArgumentException("tokens " + path + ": --seq-len " + seqLen + ", expected a positive number of tokens");
        TokenFile file = TokenFile.open(path);
        Arena arena = Arena.ofShared();
        TokenWindows w;
        try {
            w = new TokenWindows(file, seqLen, arena, file.map(arena));
        } catch (IOException | RuntimeException e) {
            arena.close();
            throw e;
        }
        try {
            if (w.windows == 0) {
                throw new IllegalArgumentException("tokens " + path + ": " + file.count() + " tokens make no window of --seq-len " + seqLen
                    + " (a window needs " + ((long) seqLen + 1) + ")");
            }
            if (vocabSize > 0) w.checkIds(vocabSize);
            return w;
        } catch (RuntimeException e) {
            w.close();
            throw e;
        }
    }

    /** Throws (naming the file and the position) at the first id outside [0, vocabSize). */
    public void checkIds(int vocabSize) {
        TokenFile.Element e = file.element();
        if (!e.signed && e.bytes == 2 && vocabSize >= 65_536) return; // every uint16 fits
        for (long i = 0; i < file.count(); i++) {
            long id = TokenFile.token(tokens, e, i);
            if (id < 0 || id >= vocabSize) {
                throw new IllegalArgumentException("tokens " + file.path() + ": id " + id + " at position " + i + " is outside the model's vocabulary [0, " + vocabSize + ")");
            }
        }
    }

    public TokenFile file() {
        return file;
    }

    /** Tokens in the file. */
    public long tokens() {
        return file.count();
    }

    public int seqLen() {
        return seqLen;
    }

    /** Number of whole windows: (tokens - 1) / T. */
    public long windows() {
        return windows;
    }

    /** Micro-batches of {@code batch} windows per epoch; a last partial one counts unless {@code dropLast}. */
    public long batchesPerEpoch(int batch, boolean dropLast) {
        if (batch < 1) throw new IllegalArgumentException("--batch " + batch + ": expected a positive number of windows");
        return dropLast ? windows / batch : (windows + batch - 1) / batch;
    }

    /** Token {@code index} of the stream, widened to long. */
    public long token(long index) {
        return TokenFile.token(tokens, file.element(), index);
    }

    /** The window order of {@code epoch}: a Philox Fisher-Yates permutation of (seed, epoch) when shuffling, else 0, 1, 2, ... */
    public long[] order(int epoch, long seed, boolean shuffle) {
        return DataLoader.epochOrder(windows, epoch, seed, shuffle);
    }

    /** Window {@code w}'s inputs (tokens[wT .. wT+T-1]) and targets (tokens[wT+1 .. wT+T]) into row {@code row} of [*, T] arrays. */
    public void window(long w, long[] inputs, long[] targets, int row) {
        if (w < 0 || w >= windows) throw new IndexOutOfBoundsException("window " + w + " of " + windows);
        long start = w * seqLen;
        int at = row * seqLen;
        long previous = token(start);
        for (int t = 0; t < seqLen; t++) {
            long next = token(start + t + 1);
            inputs[at + t] = previous;
            targets[at + t] = next;
            previous = next;
        }
    }

    /**
     * Micro-batch {@code b} of an epoch's {@code order}: windows order[b*B ..] into inputs and targets, both [B, T]
     * row-major; returns the rows filled (B, or fewer for the last batch).
     */
    public int batch(long[] order, long b, int batchSize, long[] inputs, long[] targets) {
        long first = b * batchSize;
        if (first < 0 || first >= order.length) throw new IndexOutOfBoundsException("batch " + b + " of " + batchesPerEpoch(batchSize, false));
        if (inputs.length < (long) batchSize * seqLen || targets.length < (long) batchSize * seqLen) {
            throw new IllegalArgumentException("inputs/targets hold " + Math.min(inputs.length, targets.length) + " ids, a batch needs [" + batchSize + ", " + seqLen + "]");
        }
        int rows = (int) Math.min(batchSize, order.length - first);
        for (int r = 0; r < rows; r++) window(order[(int) (first + r)], inputs, targets, r);
        return rows;
    }

    @Override
    public void close() {
        arena.close();
    }
}
