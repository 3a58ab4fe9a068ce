package org.distill4j.core.train;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
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
 */
public final class TeacherCache implements AutoCloseable {
    public enum Storage { DEVICE, FILE }

    /** Where and how the cache is kept; {@code file} is needed for FILE and ignored for DEVICE. */
    public record Options(Storage storage, DType dtype, Path file) {
        public Options {
            if (storage == null) throw new IllegalArgumentException("teacher cache: storage must be device or file");
            if (dtype != DType.F32 && dtype != DType.BF16) throw new IllegalArgumentException("teacher cache: dtype must be f32 or bf16, got " + dtype);
            if (storage == Storage.FILE && file == null) throw new IllegalArgumentException("teacher cache: file storage needs a file path");
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

    private static final String TENSOR = "logits";

    private final Backend backend;
    private final Options options;
    private final Tensor table;            // DEVICE: on the backend; FILE: a CPU tensor over the mapped file
    private final Safetensors mapped;      // FILE only
    private final boolean reused;
    private final long classes;
    private final Arena arena = Arena.ofShared();
    private Tensor hostOrder, deviceOrder; // this epoch's sample order (positions -> sample indices); deviceOrder: DEVICE on a GPU
    private final HostStaging staging;     // FILE on a GPU: rows gathered on the host, copied asynchronously

    private TeacherCache(Backend backend, Options options, Tensor table, Safetensors mapped, boolean reused) {
        this.backend = backend;
        this.options = options;
        this.table = table;
        this.mapped = mapped;
        this.reused = reused;
        this.classes = table.size(1);
        this.staging = new HostStaging(backend, 2);
    }

    /** Computes (or, for a matching file, reuses) the cache for {@code train}. */
    public static TeacherCache build(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, Options options)
        throws IOException {
        long rows = train.size(), classes = teachers.getFirst().outputShape()[0];
        // Only a file outlives the run and needs to be matched against it later.
        String fingerprint = options.storage() == Storage.FILE ? fingerprint(teachers, temperature, train, options.dtype()) : "";
        if (options.storage() == Storage.FILE && Files.isRegularFile(options.file())) {
            Safetensors st = Safetensors.open(options.file());
            var e = st.entries().get(TENSOR);
            if (fingerprint.equals(st.metadata().get("fingerprint")) && e != null && e.dtype().equals(options.dtype().name())) {
                return new TeacherCache(backend, options, mappedTable(st, e), st, true);
            }
            st.close();
        }
        long bytes = rows * classes * options.dtype().bytes();
        try (Arena build = Arena.ofShared()) {
            MemorySegment host = build.allocate(Math.max(1, bytes), 64);
            fill(backend, teachers, temperature, train, batchSize, options.dtype(), classes, host);
            Tensor hostTable = Tensor.wrap(CpuBackend.get(), options.dtype(), new long[] {rows, classes}, host.asSlice(0, bytes), null);
            if (options.storage() == Storage.DEVICE) {
                Tensor table = backend.empty(options.dtype(), rows, classes);
                backend.copyFromHost(hostTable.data(), table);
                return new TeacherCache(backend, options, table, null, false);
            }
            Path file = options.file().toAbsolutePath();
            if (file.getParent() != null) Files.createDirectories(file.getParent());
            Safetensors.write(file, Map.of(TENSOR, hostTable), Map.of("fingerprint", fingerprint, "format", "distill4j-teacher-cache"));
        }
        Safetensors st = Safetensors.open(options.file());
        return new TeacherCache(backend, options, mappedTable(st, st.entries().get(TENSOR)), st, false);
    }

    private static Tensor mappedTable(Safetensors st, Safetensors.Entry e) {
        return Tensor.wrap(CpuBackend.get(), Safetensors.dtypeOf(e.dtype()), e.shape(), st.bytes(e), null);
    }

    /** Runs the teachers over the training set in order and writes their logits into {@code host} ([rows, classes], dtype). */
    private static void fill(Backend backend, List<Model> teachers, float temperature, Dataset train, int batchSize, DType dtype, long classes,
                             MemorySegment host) {
        try (DataLoader loader = new DataLoader(train, backend, batchSize, false, 0, false)) {
            loader.start(0, 0);
            while (loader.hasNext()) {
                DataLoader.Batch b = loader.next();
                try (Arena step = Arena.ofShared()) {
                    Tensor logits = Trainer.teacherLogits(backend, step, teachers, temperature, b.x());
                    float[] values = backend.read(logits);
                    long base = b.firstPosition() * classes;
                    for (int i = 0; i < values.length; i++) {
                        if (dtype == DType.F32) host.setAtIndex(JAVA_FLOAT, base + i, values[i]);
                        else host.setAtIndex(JAVA_SHORT, base + i, Bf16.fromFloat(values[i]));
                    }
                }
            }
        }
    }

    private static String fingerprint(List<Model> teachers, float temperature, Dataset train, DType dtype) {
        try {
            MessageDigest sha = MessageDigest.getInstance("SHA-256");
            StringBuilder head = new StringBuilder("distill4j-teacher-cache-v1;teachers=").append(teachers.size()).append(";dtype=").append(dtype);
            if (teachers.size() > 1) head.append(";T=").append(Float.floatToIntBits(temperature)); // one teacher: raw logits, T-free
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

    /** Bytes the table takes (in device memory for DEVICE, in the file for FILE). */
    public long tableBytes() { return table.byteSize(); }

    /** Sets this epoch's order (the loader's positions -> sample indices); one upload per epoch. */
    public void startEpoch(long[] order) {
        if (order.length != table.size(0)) {
            throw new IllegalArgumentException("teacher cache holds " + table.size(0) + " samples, the epoch has " + order.length);
        }
        if (hostOrder == null) hostOrder = Tensor.wrap(CpuBackend.get(), DType.I64, new long[] {order.length}, arena.allocate(JAVA_LONG, order.length), null);
        MemorySegment.copy(order, 0, hostOrder.data(), JAVA_LONG, 0, order.length);
        if (options.storage() == Storage.DEVICE && !backend.isHost()) {
            if (deviceOrder == null) deviceOrder = backend.empty(arena, DType.I64, order.length);
            backend.copyFromHost(hostOrder.data(), deviceOrder);
        }
    }

    /** out [rows, classes] F32 on the backend = the cached logits of the samples at positions [first, first + rows) of this epoch. */
    public void lookup(long first, int rows, Tensor out) {
        if (hostOrder == null) throw new IllegalStateException("teacher cache: startEpoch was not called");
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

    @Override
    public void close() {
        staging.close();
        if (options.storage() == Storage.DEVICE) table.close();
        if (deviceOrder != null) deviceOrder.close();
        arena.close();
        if (mapped != null) mapped.close();
    }
}
