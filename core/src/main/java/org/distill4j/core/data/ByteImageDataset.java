package org.distill4j.core.data;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Images stored as unsigned bytes (MNIST IDX files, CIFAR-10 binary batches), memory-mapped; a
 * sample becomes float32 pixel / 255 when it is copied into a batch.
 */
public final class ByteImageDataset implements Dataset {
    private final Arena arena;
    private final List<MemorySegment> images; // per file: samples x sampleSize bytes (strided for CIFAR)
    private final List<MemorySegment> labels;
    private final long[] firstIndex;          // first global index of each file
    private final long recordBytes, imageOffset, labelOffset;
    private final long size;
    private final long[] shape;
    private final int classes;

    private ByteImageDataset(Arena arena, List<MemorySegment> images, List<MemorySegment> labels, long recordBytes, long imageOffset,
                             long labelOffset, long[] shape, int classes) {
        this.arena = arena;
        this.images = images;
        this.labels = labels;
        this.recordBytes = recordBytes;
        this.imageOffset = imageOffset;
        this.labelOffset = labelOffset;
        this.shape = shape;
        this.classes = classes;
        this.firstIndex = new long[images.size() + 1];
        for (int i = 0; i < images.size(); i++) firstIndex[i + 1] = firstIndex[i] + images.get(i).byteSize() / recordBytes;
        this.size = firstIndex[images.size()];
    }

    private static final ValueLayout.OfInt BIG_INT = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    private static MemorySegment map(Arena arena, Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            return ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size(), arena);
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException(file + ": no such file");
        }
    }

    /**
     * MNIST IDX: an images file (magic 0x00000803, count, rows, cols, then bytes) and a labels file
     * (magic 0x00000801, count, then bytes). Counts must agree with each other and the file sizes.
     */
    public static ByteImageDataset idx(Path imagesFile, Path labelsFile) throws IOException {
        Arena arena = Arena.ofShared();
        try {
            MemorySegment img = map(arena, imagesFile), lab = map(arena, labelsFile);
            if (img.byteSize() < 16) throw new IllegalArgumentException(imagesFile + ": " + img.byteSize() + " bytes is too short for an IDX images header (16)");
            if (lab.byteSize() < 8) throw new IllegalArgumentException(labelsFile + ": " + lab.byteSize() + " bytes is too short for an IDX labels header (8)");
            int magic = img.get(BIG_INT, 0), lmagic = lab.get(BIG_INT, 0);
            if (magic != 0x803) throw new IllegalArgumentException(imagesFile + ": magic number 0x" + Integer.toHexString(magic) + ", expected 0x803 (IDX ubyte images)");
            if (lmagic != 0x801) throw new IllegalArgumentException(labelsFile + ": magic number 0x" + Integer.toHexString(lmagic) + ", expected 0x801 (IDX ubyte labels)");
            long n = Integer.toUnsignedLong(img.get(BIG_INT, 4)), rows = Integer.toUnsignedLong(img.get(BIG_INT, 8)), cols = Integer.toUnsignedLong(img.get(BIG_INT, 12));
            long ln = Integer.toUnsignedLong(lab.get(BIG_INT, 4));
            if (rows == 0 || cols == 0) throw new IllegalArgumentException(imagesFile + ": image size " + rows + "x" + cols + " is empty");
            if (16 + n * rows * cols != img.byteSize()) {
                throw new IllegalArgumentException(imagesFile + ": header says " + n + " images of " + rows + "x" + cols + " (" + (16 + n * rows * cols)
                    + " bytes), the file has " + img.byteSize());
            }
            if (8 + ln != lab.byteSize()) throw new IllegalArgumentException(labelsFile + ": header says " + ln + " labels, the file has " + (lab.byteSize() - 8));
            if (ln != n) throw new IllegalArgumentException(labelsFile + ": " + ln + " labels for " + n + " images in " + imagesFile);
            MemorySegment labels = lab.asSlice(8);
            int classes = 0;
            for (long i = 0; i < n; i++) classes = Math.max(classes, (labels.get(JAVA_BYTE, i) & 0xff) + 1);
            return new ByteImageDataset(arena, List.of(img.asSlice(16)), List.of(labels), rows * cols, 0, -1, new long[] {1, rows, cols}, classes);
        } catch (IOException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    /** CIFAR-10 binary batches: records of 1 label byte + 3072 bytes (3 x 32 x 32, channel-major). */
    public static ByteImageDataset cifar10(List<Path> files) throws IOException {
        if (files.isEmpty()) throw new IllegalArgumentException("cifar10: no files given");
        Arena arena = Arena.ofShared();
        try {
            List<MemorySegment> segs = new ArrayList<>();
            for (Path f : files) {
                MemorySegment m = map(arena, f);
                if (m.byteSize() == 0 || m.byteSize() % 3073 != 0) {
                    throw new IllegalArgumentException(f + ": " + m.byteSize() + " bytes is not a whole number of CIFAR-10 records (3073 bytes each)");
                }
                for (long r = 0; r < m.byteSize() / 3073; r++) {
                    int label = m.get(JAVA_BYTE, r * 3073) & 0xff;
                    if (label > 9) throw new IllegalArgumentException(f + ": record " + r + " has label " + label + ", expected 0 to 9");
                }
                segs.add(m);
            }
            return new ByteImageDataset(arena, segs, segs, 3073, 1, 0, new long[] {3, 32, 32}, 10);
        } catch (IOException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    private int file(long index) {
        if (index < 0 || index >= size) throw new IndexOutOfBoundsException("sample " + index + " of " + size);
        int f = Arrays.binarySearch(firstIndex, index);
        return f >= 0 ? f : -f - 2;
    }

    @Override public long size() { return size; }
    @Override public long[] sampleShape() { return shape.clone(); }
    @Override public int classes() { return classes; }

    @Override
    public void sample(long index, MemorySegment dst, long at) {
        int f = file(index);
        long local = index - firstIndex[f], n = sampleSize();
        MemorySegment src = images.get(f);
        long base = local * recordBytes + imageOffset;
        for (long i = 0; i < n; i++) dst.setAtIndex(JAVA_FLOAT, at + i, (src.get(JAVA_BYTE, base + i) & 0xff) / 255f);
    }

    @Override
    public long label(long index) {
        int f = file(index);
        long local = index - firstIndex[f];
        return labelOffset < 0 ? labels.get(f).get(JAVA_BYTE, local) & 0xff : labels.get(f).get(JAVA_BYTE, local * recordBytes + labelOffset) & 0xff;
    }

    @Override
    public void close() {
        if (arena.scope().isAlive()) arena.close();
    }
}
