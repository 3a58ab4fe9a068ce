package org.distill4j.core.io;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;

/**
 * safetensors files (huggingface/safetensors): an 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
 *
 * <p>Reading memory-maps the file through FFM (one Arena per open file) and copies each tensor
 * from the mapping to its device without a Java array. Every rule of the format is enforced, and
 * a violation names the file and the tensor: the header length fits the file; the JSON is an
 * object; each entry has exactly dtype, shape and data_offsets; the dtype is known; offsets are
 * ordered, inside the data section, contiguous and non-overlapping (as the reference
 * implementation requires); each size is numel x dtype size.
 */
public final class Safetensors implements AutoCloseable {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final long MAX_HEADER = 100L << 20;
    private static final Map<String, Integer> DTYPE_BYTES = Map.ofEntries(Map.entry("F64", 8), Map.entry("F32", 4), Map.entry("F16", 2),
        Map.entry("BF16", 2), Map.entry("I64", 8), Map.entry("I32", 4), Map.entry("I16", 2), Map.entry("I8", 1), Map.entry("U8", 1),
        Map.entry("BOOL", 1));

    /** One tensor of the file: byte range [begin, end) relative to the data section. */
    public record Entry(String name, String dtype, long[] shape, long begin, long end) {}

    private final Path file;
    private final Arena arena;
    private final MemorySegment data;
    private final Map<String, Entry> entries;
    private final Map<String, String> metadata;

    private Safetensors(Path file, Arena arena, MemorySegment data, Map<String, Entry> entries, Map<String, String> metadata) {
        this.file = file;
        this.arena = arena;
        this.data = data;
        this.entries = entries;
        this.metadata = metadata;
    }

    public static Safetensors open(Path file) throws IOException {
        Arena arena = Arena.ofShared();
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            long size = ch.size();
            if (size < 8) throw new IllegalArgumentException(file + ": " + size + " bytes is too short for a safetensors file (8-byte header length)");
            MemorySegment all = ch.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
            long headerLen = all.get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0);
            if (headerLen < 2 || headerLen > size - 8 || headerLen > MAX_HEADER) {
                throw new IllegalArgumentException(file + ": header length " + Long.toUnsignedString(headerLen) + " does not fit the file ("
                    + size + " bytes)");
            }
            String header = new String(all.asSlice(8, headerLen).toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8);
            MemorySegment data = all.asSlice(8 + headerLen);
            Map<String, String> metadata = new LinkedHashMap<>();
            Map<String, Entry> entries = parseHeader(file, header, data.byteSize(), metadata);
            return new Safetensors(file, arena, data, entries, metadata);
        } catch (NoSuchFileException e) {
            arena.close();
            throw new IllegalArgumentException(file + ": no such file");
        } catch (IOException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    private static Map<String, Entry> parseHeader(Path file, String header, long dataSize, Map<String, String> metadata) {
        JsonNode root;
        try {
            root = JSON.readTree(header);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException(file + ": header is not valid JSON: " + e.getOriginalMessage());
        }
        if (root == null || !root.isObject()) throw new IllegalArgumentException(file + ": header must be a JSON object");
        Map<String, Entry> entries = new TreeMap<>();
        for (Map.Entry<String, JsonNode> f : root.properties()) {
            String name = f.getKey();
            JsonNode v = f.getValue();
            if (name.equals("__metadata__")) {
                if (!v.isObject()) throw new IllegalArgumentException(file + ": __metadata__ must be an object of strings");
                v.properties().forEach(m -> {
                    if (!m.getValue().isTextual()) throw new IllegalArgumentException(file + ": __metadata__." + m.getKey() + " must be a string");
                    metadata.put(m.getKey(), m.getValue().asText());
                });
                continue;
            }
            String where = file + ": tensor '" + name + "'";
            if (!v.isObject()) throw new IllegalArgumentException(where + ": entry must be an object");
            Set<String> keys = new java.util.HashSet<>();
            v.fieldNames().forEachRemaining(keys::add);
            if (!keys.equals(Set.of("dtype", "shape", "data_offsets"))) {
                throw new IllegalArgumentException(where + ": entry must have exactly dtype, shape and data_offsets, has " + new java.util.TreeSet<>(keys));
            }
            String dtype = v.get("dtype").asText();
            Integer bytes = DTYPE_BYTES.get(dtype);
            if (!v.get("dtype").isTextual() || bytes == null) {
                throw new IllegalArgumentException(where + ": unknown dtype " + v.get("dtype") + " (known: " + new java.util.TreeSet<>(DTYPE_BYTES.keySet()) + ")");
            }
            JsonNode shapeNode = v.get("shape"), off = v.get("data_offsets");
            if (!shapeNode.isArray()) throw new IllegalArgumentException(where + ": shape must be an array");
            long[] shape = new long[shapeNode.size()];
            long numel = 1;
            for (int i = 0; i < shape.length; i++) {
                JsonNode d = shapeNode.get(i);
                if (!d.isIntegralNumber() || d.asLong() < 0) throw new IllegalArgumentException(where + ": shape[" + i + "] must be an integer >= 0, got " + d);
                shape[i] = d.asLong();
                numel = Math.multiplyExact(numel, shape[i]);
            }
            if (!off.isArray() || off.size() != 2 || !off.get(0).isIntegralNumber() || !off.get(1).isIntegralNumber()) {
                throw new IllegalArgumentException(where + ": data_offsets must be [begin, end]");
            }
            long begin = off.get(0).asLong(), end = off.get(1).asLong();
            if (begin < 0 || end < begin || end > dataSize) {
                throw new IllegalArgumentException(where + ": data_offsets [" + begin + ", " + end + "] lie outside the data section of " + dataSize + " bytes"
                    + (end > dataSize ? " (the file is truncated?)" : ""));
            }
            if (end - begin != numel * bytes) {
                throw new IllegalArgumentException(where + ": " + dtype + Arrays.toString(shape) + " needs " + numel * bytes + " bytes, data_offsets give "
                    + (end - begin));
            }
            entries.put(name, new Entry(name, dtype, shape, begin, end));
        }
        List<Entry> byOffset = new ArrayList<>(entries.values());
        byOffset.sort(Comparator.comparingLong(Entry::begin).thenComparingLong(Entry::end));
        long at = 0;
        for (Entry e : byOffset) {
            if (e.begin() < at) throw new IllegalArgumentException(file + ": tensor '" + e.name() + "' overlaps the tensor before it (offset " + e.begin() + " < " + at + ")");
            if (e.begin() > at) throw new IllegalArgumentException(file + ": bytes [" + at + ", " + e.begin() + ") of the data section belong to no tensor");
            at = e.end();
        }
        if (at != dataSize) throw new IllegalArgumentException(file + ": the data section has " + dataSize + " bytes but the tensors cover " + at);
        return Collections.unmodifiableMap(entries);
    }

    public Path file() { return file; }

    public Map<String, Entry> entries() { return entries; }

    public Map<String, String> metadata() { return metadata; }

    /** The tensor's bytes in the mapping (valid until close). */
    public MemorySegment bytes(Entry e) {
        return data.asSlice(e.begin(), e.end() - e.begin());
    }

    /** Copies tensor {@code name} into {@code dst} (same dtype and shape), straight from the mapping. */
    public void copyInto(String name, Tensor dst) {
        Entry e = entries.get(name);
        if (e == null) throw new IllegalArgumentException(file + ": no tensor '" + name + "'");
        if (!e.dtype().equals(dst.dtype().name()) || !Arrays.equals(e.shape(), dst.shape())) {
            throw new IllegalArgumentException(file + ": tensor '" + name + "' is " + e.dtype() + Arrays.toString(e.shape()) + ", expected "
                + dst.dtype() + Arrays.toString(dst.shape()));
        }
        dst.backend().copyFromHost(bytes(e), dst);
    }

    /** Writes named tensors (in name order) atomically: temp file, fsync, rename. */
    public static void write(Path file, Map<String, Tensor> tensors, Map<String, String> metadata) throws IOException {
        write(file, tensors, metadata, null);
    }

    /**
     * As {@link #write(Path, Map, Map)}, each tensor stored as {@code storeAs} (null: its own
     * dtype). Narrowing F32 to BF16 or F16 rounds to nearest even, as PyTorch's {@code .to()} does
     * ({@link Bf16#fromFloat}, {@link Float#floatToFloat16}); a value that was read from that dtype
     * comes back with the same bits. Other conversions are refused. One tensor's host copy at a time.
     */
    public static void write(Path file, Map<String, Tensor> tensors, Map<String, String> metadata, DType storeAs) throws IOException {
        TreeMap<String, Tensor> sorted = new TreeMap<>(tensors);
        for (Map.Entry<String, Tensor> e : sorted.entrySet()) {
            DType from = e.getValue().dtype();
            if (storeAs != null && storeAs != from && !(from == DType.F32 && (storeAs == DType.BF16 || storeAs == DType.F16))) {
                throw new IllegalArgumentException(file + ": cannot store tensor '" + e.getKey() + "' (" + from + ") as " + storeAs
                    + "; only F32 narrows, to BF16 or F16");
            }
        }
        Map<String, DType> dtypes = new TreeMap<>();
        Map<String, long[]> shapes = new TreeMap<>();
        sorted.forEach((name, t) -> {
            dtypes.put(name, storeAs == null ? t.dtype() : storeAs);
            shapes.put(name, t.shape());
        });
        byte[] head = header(dtypes, shapes, metadata);
        int padded = head.length;
        Path tmp = AtomicFiles.temporaryFor(file);
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
                try (Arena arena = Arena.ofConfined()) {
                    MemorySegment prefix = arena.allocate(8 + padded);
                    prefix.set(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, padded);
                    MemorySegment.copy(head, 0, prefix, ValueLayout.JAVA_BYTE, 8, padded);
                    write(ch, prefix);
                }
                for (Tensor t : sorted.values()) {
                    try (Arena arena = Arena.ofConfined()) { // freed after each tensor: the host copies never add up to the whole model
                        MemorySegment host = arena.allocate(Math.max(1, t.byteSize()), 64).asSlice(0, t.byteSize());
                        t.backend().copyToHost(t, host);
                        write(ch, storeAs == null || storeAs == t.dtype() ? host : narrow(arena, host, t.numel(), storeAs));
                    }
                }
                ch.force(true);
            }
            AtomicFiles.publish(tmp, file);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    /**
     * The header of tensors of these dtypes and shapes laid out back to back in name order: JSON
     * ({@code __metadata__} first when there is any), padded with spaces to a multiple of 8 bytes so
     * the data section starts 8-byte aligned. A writer puts its length (little-endian int64) before
     * it and the tensors' bytes, in name order, after it.
     */
    public static byte[] header(Map<String, DType> dtypes, Map<String, long[]> shapes, Map<String, String> metadata) throws IOException {
        ObjectNode header = JSON.createObjectNode();
        if (!metadata.isEmpty()) {
            ObjectNode m = header.putObject("__metadata__");
            metadata.forEach(m::put);
        }
        long offset = 0;
        for (Map.Entry<String, long[]> e : new TreeMap<>(shapes).entrySet()) {
            DType dtype = dtypes.get(e.getKey());
            long bytes = dtype.bytes();
            for (long d : e.getValue()) bytes *= d;
            ObjectNode n = header.putObject(e.getKey());
            n.put("dtype", dtype.name());
            var shape = n.putArray("shape");
            for (long d : e.getValue()) shape.add(d);
            var off = n.putArray("data_offsets");
            off.add(offset);
            off.add(offset + bytes);
            offset += bytes;
        }
        byte[] json = JSON.writeValueAsBytes(header);
        byte[] head = Arrays.copyOf(json, (json.length + 7) / 8 * 8);
        Arrays.fill(head, json.length, head.length, (byte) ' ');
        return head;
    }

    /** numel float32 values (native order, as copyToHost gives them) as little-endian BF16 or F16, rounded to nearest even. */
    private static MemorySegment narrow(Arena arena, MemorySegment f32, long numel, DType to) {
        MemorySegment out = arena.allocate(Math.max(1, 2 * numel), 64).asSlice(0, 2 * numel);
        ValueLayout.OfShort le = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
        for (long i = 0; i < numel; i++) {
            float v = f32.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            out.set(le, 2 * i, to == DType.BF16 ? Bf16.fromFloat(v) : Float.floatToFloat16(v));
        }
        return out;
    }

    private static void write(FileChannel ch, MemorySegment s) throws IOException {
        var buf = s.asByteBuffer();
        while (buf.hasRemaining()) ch.write(buf);
    }

    /** The DType of a safetensors dtype name we can hold in a Tensor, or null. */
    public static DType dtypeOf(String name) {
        try {
            return DType.valueOf(name);
        } catch (IllegalArgumentException e) {
            return null;
        }
    }

    @Override
    public void close() {
        arena.close();
    }
}
