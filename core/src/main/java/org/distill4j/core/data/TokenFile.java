package org.distill4j.core.data;

import java.io.IOException;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.distill4j.core.io.AtomicFiles;

/**
 * A 1-D stream of token ids on disk, in one of two formats (docs/tokenizers.md):
 * <ul>
 *   <li>llm.c's token file ({@code .bin}): a header of 256 little-endian int32 (magic 20240520, version,
 *       token count, then zeros) followed by the tokens; version 1 holds uint16 tokens (llm.c's own
 *       loader reads only this one), version 2 (ours, for vocabularies above 65,536 ids) uint32 tokens;</li>
 *   <li>a 1-D NumPy {@code .npy} of int16, uint16, int32, uint32 or int64, little-endian, C order.</li>
 * </ul>
 * The format is told by the file's magic bytes, not its name. {@link #map} memory-maps the tokens;
 * {@link Writer} streams tokens to a new file atomically (nothing appears under the target name until
 * {@link Writer#commit}).
 */
public record TokenFile(Path path, Format format, Element element, long dataOffset, long count) {
    /** llm.c's token-file magic number (first int32 of the header). */
    public static final int BIN_MAGIC = 20240520;
    /** Header size of an llm.c token file: 256 int32. */
    public static final int BIN_HEADER_BYTES = 256 * 4;

    public enum Format { LLMC_BIN, NPY }

    /** How a token is stored: bytes per token, signedness, and the .npy descr. */
    public enum Element {
        INT16(2, true, "<i2"), UINT16(2, false, "<u2"), INT32(4, true, "<i4"), UINT32(4, false, "<u4"), INT64(8, true, "<i8");

        public final int bytes;
        public final boolean signed;
        public final String descr;

        Element(int bytes, boolean signed, String descr) {
            this.bytes = bytes;
            this.signed = signed;
            this.descr = descr;
        }
    }

    private static final byte[] NPY_MAGIC = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y'};
    private static final Pattern DESCR = Pattern.compile("'descr'\\s*:\\s*'([^']*)'");
    private static final Pattern ORDER = Pattern.compile("'fortran_order'\\s*:\\s*(True|False)");
    private static final Pattern SHAPE = Pattern.compile("'shape'\\s*:\\s*\\(([^)]*)\\)");

    /**
     * Reads and checks the header of {@code path}: the magic, the version or dtype, and that the file holds exactly
     * the tokens the header announces (no truncated file, no trailing or odd bytes).
     *
     * @throws IllegalArgumentException one line naming the file, the field and what was expected
     */
    public static TokenFile open(Path path) throws IOException {
        long size;
        byte[] head;
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            size = ch.size();
            ByteBuffer b = ByteBuffer.allocate((int) Math.min(size, 65_536 + 12));
            while (b.hasRemaining() && ch.read(b) >= 0) { /* fill */ }
            head = b.array();
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException("token file " + path + ": no such file");
        }
        ByteBuffer le = ByteBuffer.wrap(head).order(ByteOrder.LITTLE_ENDIAN);
        if (head.length >= 6 && java.util.Arrays.equals(java.util.Arrays.copyOf(head, 6), NPY_MAGIC)) return openNpy(path, size, head, le);
        if (head.length >= 4 && le.getInt(0) == BIN_MAGIC) {
            if (size < BIN_HEADER_BYTES) throw new IllegalArgumentException("token file " + path + ": llm.c header is " + size + " bytes, expected " + BIN_HEADER_BYTES);
            int version = le.getInt(4);
            Element element = switch (version) {
                case 1 -> Element.UINT16;
                case 2 -> Element.UINT32;
                default -> throw new IllegalArgumentException("token file " + path + ": llm.c header version " + version + ", expected 1 (uint16 tokens) or 2 (uint32 tokens)");
            };
            long count = Integer.toUnsignedLong(le.getInt(8));
            long data = size - BIN_HEADER_BYTES;
            if (data % element.bytes != 0) {
                throw new IllegalArgumentException("token file " + path + ": " + data + " bytes after the header is not a whole number of " + element.bytes + "-byte tokens");
            }
            if (data != count * element.bytes) {
                throw new IllegalArgumentException("token file " + path + ": header count " + count + " needs " + count * element.bytes + " bytes of tokens, the file has " + data);
            }
            return new TokenFile(path, Format.LLMC_BIN, element, BIN_HEADER_BYTES, count);
        }
        throw new IllegalArgumentException("token file " + path + ": neither an llm.c token file (first int32 " + BIN_MAGIC + ") nor a .npy (magic \\x93NUMPY)");
    }

    private static TokenFile openNpy(Path path, long size, byte[] head, ByteBuffer le) {
        int major = head.length > 6 ? head[6] : 0;
        int headerLen, start;
        if (major == 1 && head.length >= 10) {
            headerLen = Short.toUnsignedInt(le.getShort(8));
            start = 10;
        } else if ((major == 2 || major == 3) && head.length >= 12) {
            headerLen = le.getInt(8);
            start = 12;
        } else {
            throw new IllegalArgumentException("token file " + path + ": .npy format version " + major + " is not supported (1, 2 or 3)");
        }
        if (headerLen < 0 || start + (long) headerLen > head.length) {
            throw new IllegalArgumentException("token file " + path + ": .npy header length " + headerLen + " runs past the file's first " + head.length + " bytes");
        }
        String header = new String(head, start, headerLen, StandardCharsets.ISO_8859_1);
        Matcher d = DESCR.matcher(header), o = ORDER.matcher(header), s = SHAPE.matcher(header);
        if (!d.find() || !o.find() || !s.find()) {
            throw new IllegalArgumentException("token file " + path + ": .npy header lacks 'descr', 'fortran_order' or 'shape': " + printable(header.strip()));
        }
        Element element = null;
        for (Element e : Element.values()) if (e.descr.equals(d.group(1))) element = e;
        if (element == null) {
            throw new IllegalArgumentException("token file " + path + ": .npy dtype '" + printable(d.group(1)) + "', expected a little-endian integer: <i2, <u2, <i4, <u4 or <i8");
        }
        String[] dims = s.group(1).replace(" ", "").split(",");
        if (dims.length != 1 || dims[0].isEmpty()) {
            throw new IllegalArgumentException("token file " + path + ": .npy shape (" + printable(s.group(1).strip()) + "), expected one dimension (a 1-D token stream)");
        }
        long count;
        try {
            count = Long.parseLong(dims[0].replace("L", ""));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("token file " + path + ": .npy shape has a bad dimension '" + printable(dims[0]) + "'");
        }
        long dataOffset = start + (long) headerLen, data = size - dataOffset;
        if (count < 0 || count > size || data != count * element.bytes) {
            throw new IllegalArgumentException("token file " + path + ": .npy shape (" + count + ",) of " + element.descr + " needs " + count * element.bytes
                + " data bytes, the file has " + data);
        }
        return new TokenFile(path, Format.NPY, element, dataOffset, count);
    }

    /** Header text for a one-line message: control characters of a damaged header shown as '?'. */
    private static String printable(String text) {
        StringBuilder b = new StringBuilder(text.length());
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            b.append(c < 0x20 || (c >= 0x7f && c < 0xa0) ? '?' : c);
        }
        return b.toString();
    }

    /** Memory-maps the tokens (read-only) into {@code arena}: count * element.bytes bytes. */
    public MemorySegment map(Arena arena) throws IOException {
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            return ch.map(FileChannel.MapMode.READ_ONLY, dataOffset, count * element.bytes, arena);
        }
    }

    private static final ValueLayout.OfShort I16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt I32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong I64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** Token {@code index} of a segment from {@link #map}, widened to long (uint16/uint32 read unsigned). */
    public static long token(MemorySegment tokens, Element element, long index) {
        return switch (element) {
            case INT16 -> tokens.getAtIndex(I16, index);
            case UINT16 -> Short.toUnsignedLong(tokens.getAtIndex(I16, index));
            case INT32 -> tokens.getAtIndex(I32, index);
            case UINT32 -> Integer.toUnsignedLong(tokens.getAtIndex(I32, index));
            case INT64 -> tokens.getAtIndex(I64, index);
        };
    }

    /** The element a written file uses for ids below {@code vocabSize}: uint16 up to 65,536 ids, else uint32 (.bin) or int32 (.npy). */
    public static Element elementFor(Format format, int vocabSize) {
        if (vocabSize <= 65_536) return Element.UINT16;
        return format == Format.LLMC_BIN ? Element.UINT32 : Element.INT32;
    }

    /** The format a name asks for: .bin (llm.c) or .npy. */
    public static Format formatOf(Path output) {
        String name = output.getFileName().toString();
        if (name.endsWith(".bin")) return Format.LLMC_BIN;
        if (name.endsWith(".npy")) return Format.NPY;
        throw new IllegalArgumentException("output " + output + ": expected a name ending in .bin (llm.c token file) or .npy");
    }

    /**
     * Streams tokens into a temporary file beside the target; {@link #commit} fills in the count and renames it over
     * the target; {@link #close} without a commit deletes it. An id that does not fit the element is refused.
     */
    public static final class Writer implements AutoCloseable {
        private static final int NPY_HEADER_BYTES = 128; // magic, version, length, dict padded with spaces: fits any count
        private final Path target, tmp;
        private final Format format;
        private final Element element;
        private final long maxId;
        private final OutputStream out;
        private final ByteBuffer buffer = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
        private long count;
        private boolean committed;

        public Writer(Path target, int vocabSize) throws IOException {
            this.target = target;
            this.format = formatOf(target);
            this.element = elementFor(format, vocabSize);
            this.maxId = element == Element.UINT16 ? 0xFFFF : Integer.MAX_VALUE;
            Path parent = target.toAbsolutePath().getParent();
            if (parent != null && !Files.isDirectory(parent)) throw new IllegalArgumentException("output " + target + ": folder " + parent + " does not exist");
            this.tmp = AtomicFiles.temporaryFor(target);
            this.out = Files.newOutputStream(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING);
            out.write(new byte[format == Format.LLMC_BIN ? BIN_HEADER_BYTES : NPY_HEADER_BYTES]); // rewritten by commit()
        }

        public Element element() {
            return element;
        }

        public long count() {
            return count;
        }

        public void write(int[] ids) throws IOException {
            for (int id : ids) write(id);
        }

        public void write(int id) throws IOException {
            if (id < 0 || id > maxId) throw new IllegalArgumentException("output " + target + ": token id " + id + " does not fit " + element.descr);
            if (buffer.remaining() < 4) flush();
            if (element.bytes == 2) buffer.putShort((short) id);
            else buffer.putInt(id);
            count++;
        }

        private void flush() throws IOException {
            out.write(buffer.array(), 0, buffer.position());
            buffer.clear();
        }

        /** Writes the header with the final count, syncs, and renames the file over the target. */
        public void commit() throws IOException {
            flush();
            out.close();
            ByteBuffer header;
            if (format == Format.LLMC_BIN) {
                if (count > 0xFFFF_FFFFL) throw new IllegalArgumentException("output " + target + ": " + count + " tokens do not fit llm.c's uint32 count");
                header = ByteBuffer.allocate(BIN_HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
                header.putInt(0, BIN_MAGIC).putInt(4, element == Element.UINT16 ? 1 : 2).putInt(8, (int) count);
            } else {
                String dict = "{'descr': '" + element.descr + "', 'fortran_order': False, 'shape': (" + count + ",), }";
                StringBuilder h = new StringBuilder(dict);
                while (h.length() < NPY_HEADER_BYTES - 10 - 1) h.append(' ');
                h.append('\n');
                header = ByteBuffer.allocate(NPY_HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
                header.put(NPY_MAGIC).put((byte) 1).put((byte) 0).putShort((short) (NPY_HEADER_BYTES - 10)).put(h.toString().getBytes(StandardCharsets.ISO_8859_1));
                header.flip();
            }
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
                ch.write(header.rewind(), 0);
                ch.force(true);
            }
            AtomicFiles.publish(tmp, target);
            committed = true;
        }

        @Override
        public void close() throws IOException {
            if (committed) return;
            out.close();
            Files.deleteIfExists(tmp);
        }
    }
}
