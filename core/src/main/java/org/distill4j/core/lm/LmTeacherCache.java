package org.distill4j.core.lm;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.stream.IntStream;
import org.distill4j.core.Backend;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.data.TokenWindows;
import org.distill4j.core.io.AtomicFiles;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.distill4j.core.train.TeacherCache;

/**
 * A decoder teacher's logits for every target token of the training windows, computed once (eval
 * mode, the windows in order) and looked up per micro-batch instead of running the teacher each
 * step: the per-token counterpart of {@link TeacherCache}, with its options ({@link TeacherCache.Options}:
 * file or in-memory storage, f32 or bf16 values, top-k) and its file conventions.
 *
 * <p>Rows: window w, position i (0 <= i < T) is row w*T + i, the teacher's logits over the shared
 * ids [0, V') for predicting target i of window w. Two layouts, in a safetensors file:
 *
 * <pre>
 *   every class (k = V'):  "logits"  dtype [W*T, V']                      4 or 2 bytes per id and token
 *   top-k (k < V'):        "values"  dtype [W*T, k]  each row descending, ties to the lower id
 *                          "indices" I32   [W*T, k]  the ids of the values (4k + 4k or 2k + 4k bytes a token)
 *   metadata: format "distill4j-lm-teacher-cache", fingerprint, topk, classes, windows, seq_len, dtype
 * </pre>
 *
 * A lookup densifies a top-k row to -inf at the ids not kept (as {@link TeacherCache} and
 * Backend.scatterTopK do), so only divergences defined on a top-k teacher (KL, JSD with beta < 1)
 * may use one. The fingerprint is SHA-256 of the teacher's config.json and weights, the tokens the
 * windows read (values, not the file's encoding), T, k, V' and the dtype; a file whose fingerprint
 * matches is reused, one that is a cache of this kind but does not match is rebuilt, and any other
 * file at the path is refused rather than overwritten. A build writes a temporary file beside the
 * target through a memory mapping (so the table never has to fit in heap memory), forces it to disk
 * and renames it: nothing half-written is ever at the path.
 *
 * <p>The teacher's logits are computed as {@link ChunkedLmLoss} does, from its final hidden states
 * through its lm_head a chunk of rows at a time, so no [B*T, V'] tensor exists.
 */
public final class LmTeacherCache implements AutoCloseable {
    /** Above this many shared ids a cache keeps the top {@link #DEFAULT_TOPK} by default (a full f32 table of V' = 50,257 is 196 KiB a token). */
    public static final long TOPK_DEFAULT_ABOVE = 4096;
    public static final int DEFAULT_TOPK = 64;

    static final String FORMAT = "distill4j-lm-teacher-cache";
    private static final String LOGITS = "logits", VALUES = "values", INDICES = "indices";

    private final Backend backend;
    private final long windows, classes;
    private final int seqLen, k;       // k == classes: every class ("logits")
    private final DType dtype;
    private final MemorySegment values;  // [W*T, k] in dtype
    private final MemorySegment indices; // I32 [W*T, k], top-k only (else null)
    private final Arena arena;           // DEVICE: the in-memory tables (FILE: null)
    private final boolean reused;
    private final double seconds;
    private final Path file;             // null: in memory
    private final Safetensors mapped;    // FILE: the mapping the tables live in, closed with the cache
    private final float[] negativeInfinityRow;

    private LmTeacherCache(Backend backend, long windows, int seqLen, long classes, int k, DType dtype, MemorySegment values, MemorySegment indices, Arena arena,
                           Safetensors mapped, boolean reused, double seconds, Path file) {
        this.backend = backend;
        this.windows = windows;
        this.seqLen = seqLen;
        this.classes = classes;
        this.k = k;
        this.dtype = dtype;
        this.values = values;
        this.indices = indices;
        this.arena = arena;
        this.reused = reused;
        this.seconds = seconds;
        this.file = file;
        this.mapped = mapped;
        this.negativeInfinityRow = new float[Math.toIntExact(classes)];
        Arrays.fill(negativeInfinityRow, Float.NEGATIVE_INFINITY);
    }

    /** The k a decoder cache keeps when none is asked for: {@link #DEFAULT_TOPK} above {@link #TOPK_DEFAULT_ABOVE} shared ids, else 0 (every id). */
    public static int defaultTopK(long vocab) {
        return vocab > TOPK_DEFAULT_ABOVE ? DEFAULT_TOPK : 0;
    }

    /**
     * Computes the cache of {@code teacher} over every window of {@code train}, or reuses a matching
     * file ({@code options.storage()} FILE); DEVICE keeps it in host memory for this run only (the
     * decoders run on the CPU). {@code options.topK()} 0 keeps every shared id. {@code batch}:
     * windows per teacher forward.
     */
    public static LmTeacherCache build(DecoderModel teacher, TokenWindows train, long vocab, TeacherCache.Options options, int batch) throws IOException {
        if (vocab < 1 || vocab > teacher.config().vocab()) throw new IllegalArgumentException("teacher cache: shared vocabulary " + vocab + " outside [1, " + teacher.config().vocab() + "]");
        if (options.topK() > vocab) {
            throw new IllegalArgumentException("--teacher-cache-topk " + options.topK() + ": the models share " + vocab + " ids (top-k keeps at most all of them)");
        }
        if (batch < 1) throw new IllegalArgumentException("teacher cache: batch must be >= 1 window, got " + batch);
        int k = options.topK() == 0 ? Math.toIntExact(vocab) : options.topK();
        DType dtype = options.dtype();
        long rows = Math.multiplyExact(train.windows(), (long) train.seqLen());
        long t0 = System.nanoTime();
        if (options.storage() == TeacherCache.Storage.DEVICE) {
            Arena arena = Arena.ofShared();
            try {
                MemorySegment v = arena.allocate(Math.max(1, rows * k * dtype.bytes()), 64);
                MemorySegment ix = k == vocab ? null : arena.allocate(Math.max(1, rows * k * Integer.BYTES), 64);
                fill(teacher, train, vocab, k, dtype, batch, v, ix);
                return new LmTeacherCache(teacher.backend(), train.windows(), train.seqLen(), vocab, k, dtype, v, ix, arena, null, false, (System.nanoTime() - t0) / 1e9, null);
            } catch (RuntimeException e) {
                arena.close();
                throw e;
            }
        }
        Path path = options.file().toAbsolutePath();
        if (Files.isDirectory(path)) throw new IllegalArgumentException("--teacher-cache " + path + ": is a folder; name a file (file:PATH)");
        String fingerprint = fingerprint(teacher, train, vocab, k, dtype);
        if (Files.exists(path)) {
            LmTeacherCache found = open(teacher.backend(), path, fingerprint, train, vocab, k, dtype, t0, true);
            if (found != null) return found;
        }
        Map<String, String> metadata = new LinkedHashMap<>();
        metadata.put("format", FORMAT);
        metadata.put("fingerprint", fingerprint);
        metadata.put("topk", Integer.toString(k));
        metadata.put("classes", Long.toString(vocab));
        metadata.put("windows", Long.toString(train.windows()));
        metadata.put("seq_len", Integer.toString(train.seqLen()));
        metadata.put("dtype", dtype.name());
        Map<String, long[]> shapes = new LinkedHashMap<>();
        Map<String, DType> dtypes = new LinkedHashMap<>();
        if (k == vocab) {
            shapes.put(LOGITS, new long[] {rows, vocab});
            dtypes.put(LOGITS, dtype);
        } else {
            shapes.put(INDICES, new long[] {rows, k});  // name order, as Safetensors.write lays tensors out
            dtypes.put(INDICES, DType.I32);
            shapes.put(VALUES, new long[] {rows, k});
            dtypes.put(VALUES, dtype);
        }
        if (path.getParent() != null) Files.createDirectories(path.getParent());
        Path tmp = AtomicFiles.temporaryFor(path);
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.READ, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING);
                 Arena map = Arena.ofShared()) {
                byte[] head = Safetensors.header(dtypes, shapes, metadata);
                long dataStart = 8L + head.length, offset = 0;
                Map<String, MemorySegment> tables = new LinkedHashMap<>();
                long size = dataStart;
                for (var e : shapes.entrySet()) size += e.getValue()[0] * e.getValue()[1] * dtypes.get(e.getKey()).bytes();
                MemorySegment all = ch.map(FileChannel.MapMode.READ_WRITE, 0, size, map);
                all.set(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, head.length);
                MemorySegment.copy(head, 0, all, ValueLayout.JAVA_BYTE, 8, head.length);
                for (var e : shapes.entrySet()) {
                    long bytes = e.getValue()[0] * e.getValue()[1] * dtypes.get(e.getKey()).bytes();
                    tables.put(e.getKey(), all.asSlice(dataStart + offset, bytes));
                    offset += bytes;
                }
                fill(teacher, train, vocab, k, dtype, batch, tables.get(k == vocab ? LOGITS : VALUES), tables.get(INDICES));
                all.force();
            }
            AtomicFiles.publish(tmp, path);
        } finally {
            Files.deleteIfExists(tmp);
        }
        LmTeacherCache written = open(teacher.backend(), path, fingerprint, train, vocab, k, dtype, t0, false);
        if (written == null) throw new IllegalStateException(path + ": the teacher cache just written does not match its own fingerprint");
        return written;
    }

    /**
     * The cache at {@code path} when its fingerprint matches (checked for the expected tables),
     * null when it is a decoder teacher cache for other inputs (to be rebuilt); refuses a file that
     * is not one.
     */
    private static LmTeacherCache open(Backend backend, Path path, String fingerprint, TokenWindows train, long vocab, int k, DType dtype, long t0,
                                       boolean reused) throws IOException {
        Safetensors st;
        try {
            st = Safetensors.open(path);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("--teacher-cache " + path + ": not a Distill4J decoder teacher cache (" + e.getMessage()
                + "); remove it or name another file");
        }
        boolean keep = false;
        try {
            String format = st.metadata().get("format");
            if (!FORMAT.equals(format)) {
                throw new IllegalArgumentException("--teacher-cache " + path + ": not a Distill4J decoder teacher cache (metadata 'format' is "
                    + (format == null ? "missing" : "'" + format + "'") + ", expected '" + FORMAT + "'); remove it or name another file");
            }
            if (!fingerprint.equals(st.metadata().get("fingerprint"))) return null;
            long rows = train.windows() * train.seqLen();
            String valuesName = k == vocab ? LOGITS : VALUES;
            expect(st, path, valuesName, dtype, new long[] {rows, k == vocab ? vocab : k});
            if (k != vocab) expect(st, path, INDICES, DType.I32, new long[] {rows, k});
            if (st.entries().size() != (k == vocab ? 1 : 2)) throw new IllegalArgumentException("--teacher-cache " + path + ": holds tensors " + st.entries().keySet()
                + ", expected " + (k == vocab ? "[" + LOGITS + "]" : "[" + INDICES + ", " + VALUES + "]"));
            LmTeacherCache c = new LmTeacherCache(backend, train.windows(), train.seqLen(), vocab, k, dtype, st.bytes(st.entries().get(valuesName)),
                k == vocab ? null : st.bytes(st.entries().get(INDICES)), null, st, reused, (System.nanoTime() - t0) / 1e9, path);
            keep = true;
            return c;
        } finally {
            if (!keep) st.close();
        }
    }

    private static void expect(Safetensors st, Path path, String name, DType dtype, long[] shape) {
        Safetensors.Entry e = st.entries().get(name);
        if (e == null || !e.dtype().equals(dtype.name()) || !Arrays.equals(e.shape(), shape)) {
            throw new IllegalArgumentException("--teacher-cache " + path + ": tensor '" + name + "' is " + (e == null ? "missing" : e.dtype() + Arrays.toString(e.shape()))
                + ", expected " + dtype.name() + Arrays.toString(shape) + " (the file matches this run's fingerprint but is damaged; remove it)");
        }
    }

    /**
     * Runs the teacher (eval) over the windows in order, {@code batch} at a time, and writes row
     * w*T + i of the table: every logit ({@code ids} null, k = vocab) or the k largest with their ids.
     */
    private static void fill(DecoderModel teacher, TokenWindows train, long vocab, int k, DType dtype, int batch, MemorySegment values, MemorySegment ids) {
        Backend backend = teacher.backend();
        int t = train.seqLen();
        long[] order = train.order(0, 0, false), inputs = new long[batch * t], targets = new long[batch * t];
        int v = Math.toIntExact(vocab);
        for (long b = 0, batches = train.batchesPerEpoch(batch, false); b < batches; b++) {
            int windowsHere = train.batch(order, b, batch, inputs, targets);
            long n = (long) windowsHere * t, firstRow = b * batch * t;
            try (Arena step = Arena.ofShared()) {
                Tensor hidden = teacher.forwardHidden(new Layer.Pass(backend, step, false, 0, 0), Arrays.copyOf(inputs, (int) n), windowsHere, t, null, null, null, null);
                ChunkedLmLoss.TeacherRows head = ChunkedLmLoss.TeacherRows.ofHead(hidden, teacher.lmHead(), vocab);
                int c = ChunkedLmLoss.chunkRows(-1, n, vocab);
                Tensor z = backend.empty(step, DType.F32, c, vocab);
                for (long from = 0; from < n; from += c) {
                    int rows = (int) Math.min(c, n - from);
                    Tensor zr = z.narrow0(0, rows);
                    head.logits(from, rows, zr);
                    float[] logits = backend.read(zr); // [rows, V'] row-major
                    long base = firstRow + from;
                    IntStream.range(0, rows).parallel().forEach(r -> {
                        long row = base + r;
                        if (ids == null) {
                            for (int j = 0; j < v; j++) put(values, dtype, row * v + j, logits[r * v + j]);
                        } else {
                            int[] top = TeacherCache.topK(logits, r * v, v, k);
                            for (int j = 0; j < k; j++) {
                                put(values, dtype, row * k + j, logits[r * v + top[j]]);
                                ids.setAtIndex(JAVA_INT, row * k + j, top[j]);
                            }
                        }
                    });
                }
            }
        }
    }

    /** x[i] = v in the table's dtype (bf16 rounded to nearest even, as PyTorch's .to(torch.bfloat16)). */
    private static void put(MemorySegment x, DType dtype, long i, float v) {
        if (dtype == DType.F32) x.setAtIndex(JAVA_FLOAT, i, v);
        else x.setAtIndex(JAVA_SHORT, i, Bf16.fromFloat(v));
    }

    /**
     * SHA-256 over what the cached logits depend on: the teacher's config.json (as parsed) and
     * weights, the token ids the windows read (as int64, so an int16 and an int32 file of the same
     * tokens match), T, the window count, k, V' and the dtype. Hashed from Java arrays (backend.read,
     * ByteBuffers), as TeacherCache does, never through segment views.
     */
    static String fingerprint(DecoderModel teacher, TokenWindows train, long vocab, int k, DType dtype) {
        try {
            MessageDigest sha = MessageDigest.getInstance("SHA-256");
            String head = FORMAT + "-v1;dtype=" + dtype + ";topk=" + k + ";vocab=" + vocab + ";seq_len=" + train.seqLen() + ";windows=" + train.windows()
                + ";config=" + teacher.config().json() + ";layers=" + teacher.config().layers();
            sha.update(head.getBytes(StandardCharsets.UTF_8));
            for (Parameter p : teacher.parameters()) {
                Tensor value = p.value();
                // The dtype is hashed with the name: a bf16 teacher's logits differ from the float32 one's, even from the same file.
                sha.update((p.name() + value.dtype() + Arrays.toString(value.shape())).getBytes(StandardCharsets.UTF_8));
                if (value.dtype() != DType.F32 && value.dtype() != DType.BF16) {
                    throw new IllegalStateException("teacher cache: parameter " + p.name() + " is " + value.dtype() + ", expected F32 or BF16");
                }
                long rowsAtOnce = Math.max(1, (1L << 20) / Math.max(1, value.numel() / Math.max(1, value.size(0))));
                for (long r = 0; r < value.size(0); r += rowsAtOnce) {
                    Tensor rows = value.narrow0(r, Math.min(rowsAtOnce, value.size(0) - r));
                    float[] f = value.dtype() == DType.BF16 ? rows.toFloatArray() : value.backend().read(rows); // bf16 widened exactly: one float per value
                    ByteBuffer bytes = ByteBuffer.allocate(f.length * Float.BYTES);
                    bytes.asFloatBuffer().put(f);
                    sha.update(bytes.array());
                }
            }
            long tokens = train.windows() * train.seqLen() + 1; // the tokens the windows read
            ByteBuffer block = ByteBuffer.allocate(8192 * Long.BYTES);
            for (long i = 0; i < tokens; i++) {
                block.putLong(train.token(i));
                if (!block.hasRemaining() || i == tokens - 1) {
                    sha.update(block.array(), 0, block.position());
                    block.clear();
                }
            }
            return HexFormat.of().formatHex(sha.digest());
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this Java runtime", e);
        }
    }

    /** Whether a matching file was found and reused (the teacher did not run). */
    public boolean reused() { return reused; }

    /** Logits kept per token: k, or the shared vocabulary when every class is kept. */
    public int topK() { return k; }

    public boolean keepsEveryClass() { return indices == null; }

    public long classes() { return classes; }

    public DType dtype() { return dtype; }

    /** Bytes one token's row takes: k values in the dtype, plus k int32 ids for top-k. */
    public long bytesPerToken() { return (long) k * dtype.bytes() + (indices == null ? 0 : (long) k * Integer.BYTES); }

    /** Bytes of the tables (the file's data section, or the host memory). */
    public long tableBytes() { return bytesPerToken() * windows * seqLen; }

    /** Seconds the build (or the check of a reused file) took. */
    public double seconds() { return seconds; }

    /** One line for the log: k, bytes per token, the size and where, computed or reused, and the time. */
    public String describe(boolean defaultTopK) {
        String kept = indices == null ? String.format(Locale.ROOT, "every class (%,d)", classes)
            : String.format(Locale.ROOT, "top-%d of %,d classes%s", k, classes, defaultTopK ? " (the default above " + TOPK_DEFAULT_ABOVE
                + " classes; --teacher-cache-topk 0 keeps every class)" : "");
        return String.format(Locale.ROOT, "teacher cache: %s, %s values%s, %,d bytes a token, %,d tokens, %.1f MiB %s; %s in %.1f s", kept,
            dtype == DType.F32 ? "f32" : "bf16", indices == null ? "" : " + int32 ids", bytesPerToken(), windows * seqLen, tableBytes() / (1024.0 * 1024.0),
            file == null ? "in memory" : "in " + file, reused ? "reused (fingerprint matches)" : "computed", seconds);
    }

    /**
     * The teacher's logits of a micro-batch's rows: row r is window {@code windowsOfBatch[r / T]},
     * position r % T; top-k rows densified (-inf at the ids not kept). For
     * {@link LmTrainer#teacherSource}.
     */
    public ChunkedLmLoss.TeacherRows rows(long[] windowsOfBatch, int t) {
        if (windowsOfBatch == null) throw new IllegalArgumentException("teacher cache: the micro-batch does not say which windows it holds");
        if (t != seqLen) throw new IllegalArgumentException("teacher cache: built for windows of " + seqLen + " tokens, the micro-batch has " + t);
        for (long w : windowsOfBatch) {
            if (w < 0 || w >= windows) throw new IllegalArgumentException("teacher cache: window " + w + " outside the " + windows + " it was built for");
        }
        return (from, count, out) -> {
            if (out.dtype() != DType.F32 || out.numel() != count * classes) {
                throw new IllegalArgumentException("teacher cache: out " + out.describe() + ", expected F32 [" + count + ", " + classes + "]");
            }
            if (backend.isHost()) {
                fillRows(windowsOfBatch, from, count, out.data());
            } else {
                try (Arena staging = Arena.ofConfined()) {
                    MemorySegment host = staging.allocate((long) count * classes * Float.BYTES, 64);
                    fillRows(windowsOfBatch, from, count, host);
                    backend.copyFromHost(host, out);
                }
            }
        };
    }

    /** dense [count, V'] F32 = the cached rows of micro-batch rows [from, from + count). */
    private void fillRows(long[] windowsOfBatch, long from, int count, MemorySegment dense) {
        int v = Math.toIntExact(classes);
        IntStream.range(0, count).parallel().forEach(r -> {
            long batchRow = from + r;
            long row = windowsOfBatch[(int) (batchRow / seqLen)] * seqLen + batchRow % seqLen;
            long outAt = (long) r * v;
            if (indices == null) {
                if (dtype == DType.F32) {
                    MemorySegment.copy(values, row * v * Float.BYTES, dense, outAt * Float.BYTES, (long) v * Float.BYTES);
                } else {
                    for (int j = 0; j < v; j++) dense.setAtIndex(JAVA_FLOAT, outAt + j, Bf16.toFloat(values.getAtIndex(JAVA_SHORT, row * v + j)));
                }
                return;
            }
            MemorySegment.copy(negativeInfinityRow, 0, dense, JAVA_FLOAT, outAt * Float.BYTES, v); // a bulk copy, not V stores
            for (long j = 0; j < k; j++) {
                long at = row * k + j;
                float value = dtype == DType.F32 ? values.getAtIndex(JAVA_FLOAT, at) : Bf16.toFloat(values.getAtIndex(JAVA_SHORT, at));
                dense.setAtIndex(JAVA_FLOAT, outAt + indices.getAtIndex(JAVA_INT, at), value);
            }
        });
    }

    @Override
    public void close() {
        if (arena != null) arena.close();
        if (mapped != null) mapped.close();
    }
}
