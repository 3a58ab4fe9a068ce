package org.distill4j.core.io;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * NumPy .npy files (format versions 1, 2 and 3): little-endian float32, float64, int64, int32 and
 * uint8 arrays in C order. Reading validates every header field and names the file and the field
 * on error; writing goes to a temporary file that is fsync'ed and renamed, so a reader never sees
 * a half-written array.
 */
public final class Npy {
    private Npy() {}

    private static final byte[] MAGIC = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y'};

    /** Element types we read and write, by NumPy descr. */
    public enum Type {
        F32("<f4", 4), F64("<f8", 8), I64("<i8", 8), I32("<i4", 4), U8("|u1", 1);

        final String descr;
        final int bytes;

        Type(String descr, int bytes) {
            this.descr = descr;
            this.bytes = bytes;
        }

        static Type of(Path file, String descr) {
            String d = descr.equals("<u1") ? "|u1" : descr.equals("|i1") ? "?" : descr;
            for (Type t : values()) if (t.descr.equals(d)) return t;
            throw new IllegalArgumentException(file + ": header field 'descr' is '" + descr
                + "'; supported: '<f4' (float32), '<f8' (float64), '<i8' (int64), '<i4' (int32), '|u1' (uint8), little-endian");
        }
    }

    /** An array read from a file: its type, shape, and the little-endian data. */
    public record Array(Type type, long[] shape, ByteBuffer data) {
        public long numel() {
            long n = 1;
            for (long d : shape) n *= d;
            return n;
        }

        /** The elements as float (float32 as is, float64 rounded, integers converted). */
        public float[] toFloats() {
            float[] out = new float[Math.toIntExact(numel())];
            for (int i = 0; i < out.length; i++) {
                out[i] = switch (type) {
                    case F32 -> data.getFloat(i * 4);
                    case F64 -> (float) data.getDouble(i * 8);
                    case I64 -> data.getLong(i * 8);
                    case I32 -> data.getInt(i * 4);
                    case U8 -> data.get(i) & 0xff;
                };
            }
            return out;
        }

        /** The elements as long (integer types only). */
        public long[] toLongs(String what) {
            long[] out = new long[Math.toIntExact(numel())];
            for (int i = 0; i < out.length; i++) {
                out[i] = switch (type) {
                    case I64 -> data.getLong(i * 8);
                    case I32 -> data.getInt(i * 4);
                    case U8 -> data.get(i) & 0xff;
                    default -> throw new IllegalArgumentException(what + " must hold integers (int64, int32 or uint8), got " + type.descr);
                };
            }
            return out;
        }
    }

    private static final Pattern DESCR = Pattern.compile("'descr'\\s*:\\s*'([^']*)'");
    private static final Pattern ORDER = Pattern.compile("'fortran_order'\\s*:\\s*(True|False)");
    private static final Pattern SHAPE = Pattern.compile("'shape'\\s*:\\s*\\(([^)]*)\\)");

    public static Array read(Path file) throws IOException {
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(file);
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException(file + ": no such file");
        }
        ByteBuffer buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        if (bytes.length < 10 || !Arrays.equals(Arrays.copyOf(bytes, 6), MAGIC)) {
            throw new IllegalArgumentException(file + ": not a .npy file (the magic string \\x93NUMPY is missing)");
        }
        int major = bytes[6];
        int headerLen, start;
        if (major == 1) {
            headerLen = Short.toUnsignedInt(buf.getShort(8));
            start = 10;
        } else if (major == 2 || major == 3) {
            if (bytes.length < 12) throw new IllegalArgumentException(file + ": truncated .npy header");
            long len = Integer.toUnsignedLong(buf.getInt(8));
            if (len > Integer.MAX_VALUE) throw new IllegalArgumentException(file + ": header length " + len + " is too large");
            headerLen = (int) len;
            start = 12;
        } else {
            throw new IllegalArgumentException(file + ": .npy format version " + major + " is not supported (1, 2 or 3)");
        }
        if (start + (long) headerLen > bytes.length) {
            throw new IllegalArgumentException(file + ": header length " + headerLen + " runs past the end of the file (" + bytes.length + " bytes)");
        }
        String header = new String(bytes, start, headerLen, major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1);
        Matcher d = DESCR.matcher(header), o = ORDER.matcher(header), s = SHAPE.matcher(header);
        if (!d.find()) throw new IllegalArgumentException(file + ": header has no 'descr' field: " + header.strip());
        if (!o.find()) throw new IllegalArgumentException(file + ": header has no 'fortran_order' field: " + header.strip());
        if (!s.find()) throw new IllegalArgumentException(file + ": header has no 'shape' field: " + header.strip());
        Type type = Type.of(file, d.group(1));
        if (o.group(1).equals("True")) throw new IllegalArgumentException(file + ": header field 'fortran_order' is True; only C order is supported");
        List<Long> dims = new ArrayList<>();
        for (String part : s.group(1).split(",")) {
            if (part.isBlank()) continue;
            try {
                long v = Long.parseLong(part.trim().replace("L", ""));
                if (v < 0) throw new NumberFormatException();
                dims.add(v);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(file + ": header field 'shape' has a bad dimension '" + part.trim() + "'");
            }
        }
        long[] shape = dims.stream().mapToLong(Long::longValue).toArray();
        long n = 1;
        for (long v : shape) n = Math.multiplyExact(n, v);
        long dataStart = start + (long) headerLen, expected = n * type.bytes;
        if (bytes.length - dataStart != expected) {
            throw new IllegalArgumentException(file + ": shape " + Arrays.toString(shape) + " of " + type.descr + " needs " + expected
                + " data bytes, the file has " + (bytes.length - dataStart));
        }
        ByteBuffer data = ByteBuffer.wrap(bytes, (int) dataStart, (int) expected).slice().order(ByteOrder.LITTLE_ENDIAN);
        return new Array(type, shape, data);
    }

    /** Writes float32 values of the given shape, atomically (temp file, fsync, rename). */
    public static void writeFloats(Path file, float[] values, long... shape) throws IOException {
        ByteBuffer data = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) data.putFloat(v);
        write(file, Type.F32, shape, data.flip());
    }

    /** Writes int64 values of the given shape, atomically. */
    public static void writeLongs(Path file, long[] values, long... shape) throws IOException {
        ByteBuffer data = ByteBuffer.allocate(values.length * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (long v : values) data.putLong(v);
        write(file, Type.I64, shape, data.flip());
    }

    private static void write(Path file, Type type, long[] shape, ByteBuffer data) throws IOException {
        StringBuilder dims = new StringBuilder();
        for (long d : shape) dims.append(d).append(", ");
        String shapeText = shape.length == 1 ? "(" + shape[0] + ",)" : "(" + (shape.length == 0 ? "" : dims.substring(0, dims.length() - 2)) + ")";
        String dict = "{'descr': '" + type.descr + "', 'fortran_order': False, 'shape': " + shapeText + ", }";
        // Version 1.0: pad with spaces and a newline so the data starts on a 64-byte boundary.
        int total = 10 + dict.length() + 1;
        int pad = (64 - total % 64) % 64;
        String header = dict + " ".repeat(pad) + "\n";
        ByteBuffer head = ByteBuffer.allocate(10 + header.length()).order(ByteOrder.LITTLE_ENDIAN);
        head.put(MAGIC).put((byte) 1).put((byte) 0).putShort((short) header.length()).put(header.getBytes(StandardCharsets.ISO_8859_1)).flip();
        Path tmp = AtomicFiles.temporaryFor(file);
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
                while (head.hasRemaining()) ch.write(head);
                while (data.hasRemaining()) ch.write(data);
                ch.force(true);
            }
            AtomicFiles.publish(tmp, file);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}
