package org.distill4j.core.train;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.distill4j.core.Backend;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.HostStaging;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.DataLoader;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.InferencePlan;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.Parameter;

/**
 * The teachers' logits for every training sample, computed once before training (eval mode, so
 * only valid for runs without data augmentation) and looked up per batch instead of running the
 * teachers each step. With several teachers it holds the logits of their averaged softened
 * distribution at the loss's temperature.
 *
 * <p>Storage: {@link Storage#DEVICE} keeps the table [samples, classes] in device memory;
 * {@link Storage#FILE} keeps it in a safetensors file ("logits", metadata "fingerprint") that is
 * memory-mapped, so the table need not fit in device or heap memory. Values are float32 or
 * bfloat16 (half the memory; round-to-nearest-even, as PyTorch's .to(torch.bfloat16)). A file whose
 * fingerprint (SHA-256 of the teachers' weights, the training samples and labels, the temperature
 * where it matters, and the dtype) matches is reused; otherwise it is rebuilt (written to a
 * temporary file, then renamed).
 *
 * <p>Top-k ({@link Options#topK()} = k > 0): only each sample's k largest logits and their classes
 * are kept ("values" [samples, k] in the dtype, "indices" I32 [samples, k], each row by descending
 * logit, ties to the lower class): k/C of the table, so a large-vocabulary teacher's cache fits
 * where the full one would not. The table is then held in host memory (DEVICE) or the mapped file
 * (FILE), and each batch is expanded on the host to dense rows, -inf at the classes not kept (the
 * loss's top-k teacher: docs/distillation-loss.md), and copied to the device asynchronously, as a
 * FILE cache on a GPU is. Only for the divergences defined on such a teacher: KL, and JSD with beta < 1.
 */
public final class TeacherCache implements AutoCloseable {
    public enum Storage { DEVICE, FILE }

    /**
     * Where and how the cache is kept; {@code file} is needed for FILE and ignored for DEVICE;
     * {@code topK} 0 keeps every class, k > 0 each sample's k largest logits (at most the classes).
     */
    public record Options(Storage storage, DType dtype, Path file, int topK) {
        public Options {
            if (storage == null) throw new IllegalArgumentException("teacher cache: storage must be device or file");
            if (dtype != DType.F32 && dtype != DType.BF16) throw new IllegalArgumentException("teacher cache: dtype must be f32 or bf16, got " + dtype);
            if (storage == Storage.FILE && file == null) throw new IllegalArgumentException("teacher cache: file storage needs a file path");
            if (topK < 0) throw new IllegalArgumentException("--teacher-cache-topk must be >= 0 (0: every class), got " + topK);
        }

        /** Every class kept. */
        public Options(Storage storage, DType dtype, Path file) {
            this(storage, dtype, file, 0);
        }

        /** Parses "device" or "file:PATH", "f32" | "bf16" and the top-k (0: every class). */
        public static Options parse(String where, String dtype, int topK) {
            Options o = parse(where, dtype);
            return new Options(o.storage(), o.dtype(), o.file(), topK);
        }

        /** Parses "device" or "file:PATH" and "f32" | "bf16". */
        public static Options parse(String where, String dtype) {
            DType d = switch (dtype.toLowerCase(Locale.ROOT)) {
                case "f32", "fp32", "float32" -> DType.F32;
                case "bf16", "bfloat16" -> DType.BF16;
                default -> throw new IllegalArgumentException("--teacher-cache-dtype must be f32 or bf16, got '" + dtype + "'");
            };
            if (where.equalsIgnoreCase("device")) return new Options(Storage.DEVICE, d, null);
            if (where.startsWith("file:") && where.length() > 5) return new Options(Storage.FILE, d, Path.of(where.substring(5)));
            throw new IllegalArgumentException("--teacher-cache must be device or file:PATH, got '" + where + "'");
        }
    }

    private static final String TENSOR = "logits", VALUES = "values", INDICES = "indices";

    private final Backend backend;
    private final Options options;
    private final Tensor table;            // [samples, C] (or top-k: values [samples, k]); DEVICE: on the backend (top-k: host); FILE: a CPU tensor over the mapped file
    private final Tensor indices;          // top-k only: I32 [samples, k], host memory or the mapped file
    private final Safetensors mapped;      // FILE only
    private final boolean reused;
    private final long classes;
    private final Arena arena;             // the epoch orders, the -inf row and (top-k DEVICE) the tables; closed with the cache
    private MemorySegment negativeInfinityRow; // top-k: one row of -inf [C], copied under each expanded row
    private Tensor hostOrder, deviceOrder; // this epoch's sample order (positions -> sample indices); deviceOrder: DEVICE on a GPU
    private final HostStaging staging;     // FILE on a GPU: rows gathered on the host, copied asynchronously

    /** arena: one the tables were allocated in (top-k DEVICE), which the cache then owns, or null for a new one. */
    private TeacherCache(Backend backend, Options options, long classes, Tensor table, Tensor indices, Safetensors mapped, Arena arena,
                         boolean reused) {
        this.backend = backend;
        this.arena = arena != null ? arena : Arena.ofShared();
        this.options = options;
        this.table = table;
        this.indices = indices;
        this.mapped = mapped;
        this.reused = reused;
        this.classes = classes;
        this.staging = new HostStaging(backend, 2);
    }

    /** Computes (or, for a matching file, reuses) the cache for {@code train}. */
    public static TeacherCache build(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, Options options)
        throws IOException {
        return build(backend, teachers, temperature, train, batchSize, options, DType.F32);
    }

    /**
     * As above, with the teachers' matrix products and convolutions in {@code teacherDtype}: F32, or
     * BF16 (bf16 weights and inputs, float32 sums: the teachers run as bf16 inference plans on the
     * CPU backend; {@link Trainer#withTeacherDtype}). A BF16 cache file has its own fingerprint.
     */
    public static TeacherCache build(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, Options options,
                                     DType teacherDtype) throws IOException {
        if (teacherDtype != DType.F32 && teacherDtype != DType.BF16) throw new IllegalArgumentException("a teacher runs in F32 or BF16, got " + teacherDtype);
        if (teacherDtype == DType.BF16 && !backend.isHost()) throw new IllegalArgumentException("a bf16 teacher runs on the CPU backend only so far, not " + backend.name());
        long rows = train.size(), classes = teachers.getFirst().outputShape()[0];
        int k = options.topK();
        if (k > classes) throw new IllegalArgumentException("--teacher-cache-topk " + k + ": the teacher has " + classes + " classes (top-k keeps at most all of them)");
        // Only a file outlives the run and needs to be matched against it later.
        String fingerprint = options.storage() == Storage.FILE ? fingerprint(teachers, temperature, train, options.dtype(), k, teacherDtype) : "";
        if (options.storage() == Storage.FILE && Files.isRegularFile(options.file())) {
            Safetensors st = Safetensors.open(options.file());
            var e = st.entries().get(k == 0 ? TENSOR : VALUES);
            var ie = k == 0 ? null : st.entries().get(INDICES);
            if (fingerprint.equals(st.metadata().get("fingerprint")) && e != null && e.dtype().equals(options.dtype().name())
                && (k == 0 || (ie != null && ie.dtype().equals(DType.I32.name())))) {
                return new TeacherCache(backend, options, classes, mappedTable(st, e), k == 0 ? null : mappedTable(st, ie), st, null, true);
            }
            st.close();
        }
        if (k > 0) return buildTopK(backend, teachers, temperature, train, batchSize, options, classes, fingerprint, teacherDtype);
        long bytes = rows * classes * options.dtype().bytes();
        try (Arena build = Arena.ofShared()) {
            MemorySegment host = build.allocate(Math.max(1, bytes), 64);
            fill(backend, teachers, temperature, train, batchSize, teacherDtype, options.dtype(), classes, host);
            Tensor hostTable = Tensor.wrap(CpuBackend.get(), options.dtype(), new long[] {rows, classes}, host.asSlice(0, bytes), null);
            if (options.storage() == Storage.DEVICE) {
                Tensor table = backend.empty(options.dtype(), rows, classes);
                backend.copyFromHost(hostTable.data(), table);
                return new TeacherCache(backend, options, classes, table, null, null, null, false);
            }
            write(options.file(), Map.of(TENSOR, hostTable), Map.of("fingerprint", fingerprint, "format", "distill4j-teacher-cache"));
        }
        Safetensors st = Safetensors.open(options.file());
        return new TeacherCache(backend, options, classes, mappedTable(st, st.entries().get(TENSOR)), null, st, null, false);
    }

    /** Writes the tables to the cache file (its folder made first; Safetensors.write goes through a temporary file). */
    private static void write(Path file, Map<String, Tensor> tables, Map<String, String> metadata) throws IOException {
        Path absolute = file.toAbsolutePath();
        if (absolute.getParent() != null) Files.createDirectories(absolute.getParent());
        Safetensors.write(absolute, tables, metadata);
    }

    /**
     * The top-k table: the teachers' logits computed batch by batch as for the full table, each row
     * cut to its k largest (values in the dtype, classes as I32), in host memory (DEVICE) or
     * written to the file and mapped (FILE).
     */
    private static TeacherCache buildTopK(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, Options options,
                                          long classes, String fingerprint, DType teacherDtype) throws IOException {
        long rows = train.size();
        int k = options.topK();
        Arena hostArena = options.storage() == Storage.DEVICE ? Arena.ofShared() : null;  // DEVICE: the tables live as long as the cache
        try (Arena build = Arena.ofShared()) {
            Arena where = hostArena != null ? hostArena : build;
            MemorySegment values = where.allocate(Math.max(1, rows * k * options.dtype().bytes()), 64);
            MemorySegment classOf = where.allocate(Math.max(1, rows * k * Integer.BYTES), 64);
            fillTopK(backend, teachers, temperature, train, batchSize, teacherDtype, options.dtype(), classes, k, values, classOf);
            Tensor v = Tensor.wrap(CpuBackend.get(), options.dtype(), new long[] {rows, k}, values.asSlice(0, rows * k * options.dtype().bytes()), null);
            Tensor i = Tensor.wrap(CpuBackend.get(), DType.I32, new long[] {rows, k}, classOf.asSlice(0, rows * k * Integer.BYTES), null);
            if (hostArena != null) return new TeacherCache(backend, options, classes, v, i, null, hostArena, false);
            write(options.file(), Map.of(VALUES, v, INDICES, i),
                Map.of("fingerprint", fingerprint, "format", "distill4j-teacher-cache", "topk", Integer.toString(k), "classes", Long.toString(classes)));
        } catch (IOException | RuntimeException e) {
            if (hostArena != null) hostArena.close();
            throw e;
        }
        Safetensors st = Safetensors.open(options.file());
        return new TeacherCache(backend, options, classes, mappedTable(st, st.entries().get(VALUES)), mappedTable(st, st.entries().get(INDICES)), st, null, false);
    }

    /** As {@link #fill}, keeping each row's k largest logits (descending; equal logits: the lower class first). */
    private static void fillTopK(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, DType teacherDtype, DType dtype,
                                 long classes, int k, MemorySegment values, MemorySegment classOf) {
        int c = (int) classes;
        forEachBatchOfLogits(backend, teachers, temperature, train, batchSize, teacherDtype, (first, logits) ->
            java.util.stream.IntStream.range(0, logits.length / c).parallel().forEach(r -> {
                int[] top = topK(logits, r * c, c, k);
                long base = (first + r) * k;
                for (int j = 0; j < k; j++) {
                    put(values, dtype, base + j, logits[r * c + top[j]]);
                    classOf.setAtIndex(JAVA_INT, base + j, top[j]);
                }
            }));
    }

    /**
     * The classes of the k largest of x[from .. from + c), largest first; equal values (and -0/+0)
     * by Float.compare, then the lower class first; NaN counts as the largest (Float.compare), so a
     * NaN logit stays in the row and the loss shows it. O(c log k): a min-heap of the k best so far.
     */
    public static int[] topK(float[] x, int from, int c, int k) {
        int[] heap = new int[k];  // heap[0] is the worst of the best k so far
        int n = 0;
        for (int i = 0; i < c; i++) {
            if (n < k) {
                heap[n] = i;
                for (int j = n++; j > 0 && worse(x, from, heap[j], heap[(j - 1) / 2]); j = (j - 1) / 2) swap(heap, j, (j - 1) / 2);
            } else if (worse(x, from, heap[0], i)) {
                heap[0] = i;
                siftDown(x, from, heap, k);
            }
        }
        // Largest first: take the worst off the heap into the last free place, k times (n = min(k, c) kept).
        int[] out = new int[n];
        for (int end = n - 1; end >= 0; end--) {
            out[end] = heap[0];
            heap[0] = heap[end];
            siftDown(x, from, heap, end);
        }
        return out;
    }

    /** Restores the min-heap order of heap[0, size) (by worse) after heap[0] changed. */
    private static void siftDown(float[] x, int from, int[] heap, int size) {
        for (int j = 0;;) {
            int l = 2 * j + 1, r = l + 1, m = j;
            if (l < size && worse(x, from, heap[l], heap[m])) m = l;
            if (r < size && worse(x, from, heap[r], heap[m])) m = r;
            if (m == j) return;
            swap(heap, j, m);
            j = m;
        }
    }

    /** Whether class a ranks below class b: a smaller value, or an equal one at a higher class. */
    private static boolean worse(float[] x, int from, int a, int b) {
        int cmp = Float.compare(x[from + a], x[from + b]);
        return cmp < 0 || (cmp == 0 && a > b);
    }

    private static void swap(int[] h, int i, int j) {
        int t = h[i];
        h[i] = h[j];
        h[j] = t;
    }

    private static Tensor mappedTable(Safetensors st, Safetensors.Entry e) {
        return Tensor.wrap(CpuBackend.get(), Safetensors.dtypeOf(e.dtype()), e.shape(), st.bytes(e), null);
    }

    /** Runs the teachers over the training set in order and writes their logits into {@code host} ([rows, classes], dtype). */
    private static void fill(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, DType teacherDtype, DType dtype,
                             long classes, MemorySegment host) {
        forEachBatchOfLogits(backend, teachers, temperature, train, batchSize, teacherDtype, (first, logits) -> {
            long base = first * classes;
            for (int i = 0; i < logits.length; i++) put(host, dtype, base + i, logits[i]);
        });
    }

    /** What one pass of the teachers hands on: the batch's first sample and its logits [rows, classes], row-major. */
    private interface BatchOfLogits {
        void accept(long firstSample, float[] logits);
    }

    /**
     * The teachers (eval mode, averaged at the temperature) over the training set in order, a batch
     * at a time, read to the host; a BF16 teacher as bf16 inference plans (as the trainer runs it).
     */
    private static void forEachBatchOfLogits(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, DType teacherDtype,
                                             BatchOfLogits sink) {
        List<InferencePlan> plans = new java.util.ArrayList<>();
        List<InferencePlan.Workspace> workspaces = new java.util.ArrayList<>();
        try (DataLoader loader = new DataLoader(train, backend, batchSize, false, 0, false)) {
            if (teacherDtype == DType.BF16) {
                for (Model t : teachers) {
                    InferencePlan plan = InferencePlan.compile(t, batchSize, true, DType.BF16);
                    plans.add(plan);
                    workspaces.add(plan.newWorkspace());
                }
            }
            loader.start(0, 0);
            while (loader.hasNext()) {
                DataLoader.Batch b = loader.next();
                try (Arena step = Arena.ofShared()) {
                    Tensor logits = plans.isEmpty() ? Trainer.teacherLogits(backend, step, teachers, temperature, b.x())
                        : Trainer.plannedTeacherLogits(backend, step, teachers, workspaces, temperature, b.x());
                    sink.accept(b.firstPosition(), backend.read(logits));
                }
            }
        } finally {
            workspaces.forEach(InferencePlan.Workspace::close);
            plans.forEach(InferencePlan::close);
        }
    }

    /** x[i] = v in the table's dtype (bf16 rounded to nearest even). */
    private static void put(MemorySegment x, DType dtype, long i, float v) {
        if (dtype == DType.F32) x.setAtIndex(JAVA_FLOAT, i, v);
        else x.setAtIndex(JAVA_SHORT, i, Bf16.fromFloat(v));
    }

    private static String fingerprint(List<Model> teachers, float temperature, Dataset train, DType dtype, int topK, DType teacherDtype) {
        try {
            MessageDigest sha = MessageDigest.getInstance("SHA-256");
            StringBuilder head = new StringBuilder("distill4j-teacher-cache-v1;teachers=").append(teachers.size()).append(";dtype=").append(dtype);
            if (teachers.size() > 1) head.append(";T=").append(Float.floatToIntBits(temperature)); // one teacher: raw logits, T-free
            if (topK > 0) head.append(";topk=").append(topK);  // absent for a full table: its fingerprints stay as they were
            if (teacherDtype == DType.BF16) head.append(";teacher=bf16"); // absent for float32 teachers, likewise
            head.append(";rows=").append(train.size()).append(";shape=").append(java.util.Arrays.toString(train.sampleShape()));
            sha.update(head.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8));
            // Hashed from Java arrays read the way the trainer reads tensors (toArray), never through
            // segment views or byte-level segment copies: those gave the segment accessors that every
            // CPU op inlines a second profile, and the training steps after the hash ran 4-5x slower.
            for (Model t : teachers) {
                for (Parameter p : t.parameters()) {
                    Tensor v = p.value();
                    if (v.dtype() == DType.F32) {
                        float[] f = v.backend().read(v);
                        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(f.length * Float.BYTES);
                        b.asFloatBuffer().put(f);
                        sha.update(b.array());
                    } else if (v.dtype() == DType.I64) {
                        long[] l = v.backend().readLongs(v);
                        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(l.length * Long.BYTES);
                        b.asLongBuffer().put(l);
                        sha.update(b.array());
                    }
                }
            }
            try (Arena a = Arena.ofShared()) { // shared, like every arena of the training step (see above)
                long n = train.sampleSize();
                MemorySegment sample = a.allocate(JAVA_FLOAT, Math.max(1, n));
                java.nio.ByteBuffer bytes = java.nio.ByteBuffer.allocate((int) (n * Float.BYTES + Long.BYTES));
                for (long i = 0; i < train.size(); i++) {
                    train.sample(i, sample, 0);
                    bytes.clear();
                    bytes.asFloatBuffer().put(sample.toArray(JAVA_FLOAT), 0, (int) n);
                    bytes.putLong((int) (n * Float.BYTES), train.label(i));
                    sha.update(bytes.array());
                }
            }
            return HexFormat.of().formatHex(sha.digest());
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this Java runtime", e);
        }
    }

    /** Whether a matching cache file was found and reused (nothing was computed). */
    public boolean reused() { return reused; }

    /** Bytes the table takes (in device memory for DEVICE, in the file for FILE; top-k: values and classes, in host memory or the file). */
    public long tableBytes() { return table.byteSize() + (indices != null ? indices.byteSize() : 0); }

    /** Sets this epoch's order (the loader's positions -> sample indices); one upload per epoch. */
    public void startEpoch(long[] order) {
        if (order.length != table.size(0)) {
            throw new IllegalArgumentException("teacher cache holds " + table.size(0) + " samples, the epoch has " + order.length);
        }
        if (hostOrder == null) hostOrder = Tensor.wrap(CpuBackend.get(), DType.I64, new long[] {order.length}, arena.allocate(JAVA_LONG, order.length), null);
        MemorySegment.copy(order, 0, hostOrder.data(), JAVA_LONG, 0, order.length);
        if (options.storage() == Storage.DEVICE && indices == null && !backend.isHost()) {
            if (deviceOrder == null) deviceOrder = backend.empty(arena, DType.I64, order.length);
            backend.copyFromHost(hostOrder.data(), deviceOrder);
        }
    }

    /** out [rows, classes] F32 on the backend = the cached logits of the samples at positions [first, first + rows) of this epoch. */
    public void lookup(long first, int rows, Tensor out) {
        if (hostOrder == null) throw new IllegalStateException("teacher cache: startEpoch was not called");
        if (indices != null) {
            // Top-k: dense rows on the host (straight into out on the CPU; pinned memory, then one asynchronous copy, on a GPU).
            long bytes = (long) rows * classes * Float.BYTES;
            MemorySegment dense = backend.isHost() ? out.data() : staging.take(bytes);
            expandTopK(first, rows, dense);
            if (!backend.isHost()) staging.send(dense, out);
            return;
        }
        if (options.storage() == Storage.DEVICE || backend.isHost()) {
            // The table, the indices and out live on one backend: the table's.
            table.backend().gatherRows(table, (deviceOrder != null ? deviceOrder : hostOrder).narrow0(first, rows), out);
            return;
        }
        // FILE on a GPU: gather on the host into pinned memory, then one asynchronous copy.
        MemorySegment staged = staging.take((long) rows * classes * Float.BYTES);
        CpuBackend.get().gatherRows(table, hostOrder.narrow0(first, rows), Tensor.wrap(CpuBackend.get(), DType.F32, new long[] {rows, classes}, staged, null));
        staging.send(staged, out);
    }

    /** dense [rows, C] F32 = the kept logits of the samples at positions [first, first + rows), -inf at every other class. */
    private void expandTopK(long first, int rows, MemorySegment dense) {
        long k = indices.size(1);
        boolean bf16 = table.dtype() == DType.BF16;
        MemorySegment vs = table.data(), is = indices.data();
        if (negativeInfinityRow == null) {
            negativeInfinityRow = arena.allocate(JAVA_FLOAT, classes);
            for (long c = 0; c < classes; c++) negativeInfinityRow.setAtIndex(JAVA_FLOAT, c, Float.NEGATIVE_INFINITY);
        }
        java.util.stream.IntStream.range(0, rows).parallel().forEach(r -> {
            long sample = hostOrder.data().getAtIndex(JAVA_LONG, first + r), row = (long) r * classes;
            MemorySegment.copy(negativeInfinityRow, 0, dense, row * Float.BYTES, classes * Float.BYTES);  // a bulk copy, not C stores
            for (long j = 0; j < k; j++) {
                float v = bf16 ? Bf16.toFloat(vs.getAtIndex(JAVA_SHORT, sample * k + j)) : vs.getAtIndex(JAVA_FLOAT, sample * k + j);
                dense.setAtIndex(JAVA_FLOAT, row + is.getAtIndex(JAVA_INT, sample * k + j), v);
            }
        });
    }

    @Override
    public void close() {
        staging.close();
        if (options.storage() == Storage.DEVICE && indices == null) table.close();
        if (deviceOrder != null) deviceOrder.close();
        arena.close();
        if (mapped != null) mapped.close();
    }
}
