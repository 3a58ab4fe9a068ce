package org.distill4j.core.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.distill4j.core.cpu.CpuBackend;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** IDX and CIFAR-10 readers, and the double-buffered, seeded-shuffle data loader. */
class DataTest {
    @TempDir
    Path tmp;

    @Test
    void idxImagesBecomeFloatsOver255WithTheirLabels() throws Exception {
        Path[] f = org.distill4j.core.TestFiles.writeIdx(tmp, 25);
        try (ByteImageDataset d = ByteImageDataset.idx(f[0], f[1]); Arena arena = Arena.ofConfined()) {
            assertEquals(25, d.size());
            assertArrayEquals(new long[] {1, 2, 3}, d.sampleShape());
            assertEquals(10, d.classes());
            MemorySegment buf = arena.allocate(6 * 4);
            d.sample(13, buf, 0);
            for (int p = 0; p < 6; p++) assertEquals(((13 * 7 + p) % 256) / 255f, buf.getAtIndex(ValueLayout.JAVA_FLOAT, p));
            assertEquals(3, d.label(13));
        }
    }

    @Test
    void badIdxFilesNameTheFileAndTheProblem() throws Exception {
        Path[] f = org.distill4j.core.TestFiles.writeIdx(tmp, 5);
        byte[] img = Files.readAllBytes(f[0]);
        Path wrongMagic = tmp.resolve("magic"), wrongCount = tmp.resolve("count");
        byte[] m = img.clone();
        m[3] = 0x01;
        Files.write(wrongMagic, m);
        Files.write(wrongCount, Arrays.copyOf(img, img.length - 1));
        IllegalArgumentException e1 = assertThrows(IllegalArgumentException.class, () -> ByteImageDataset.idx(wrongMagic, f[1]));
        assertTrue(e1.getMessage().startsWith(wrongMagic + ": magic number"), e1.getMessage());
        IllegalArgumentException e2 = assertThrows(IllegalArgumentException.class, () -> ByteImageDataset.idx(wrongCount, f[1]));
        assertTrue(e2.getMessage().contains("header says 5 images"), e2.getMessage());
        Path[] g = org.distill4j.core.TestFiles.writeIdx(Files.createDirectory(tmp.resolve("other")), 1);
        IllegalArgumentException e3 = assertThrows(IllegalArgumentException.class, () -> ByteImageDataset.idx(f[0], g[1]));
        assertTrue(e3.getMessage().contains("1 labels for 5 images"), e3.getMessage());
    }

    @Test
    void cifarRecordsAreLabelThenChannelMajorPixels() throws Exception {
        byte[] rec = new byte[2 * 3073];
        rec[0] = 7;
        rec[1] = (byte) 255;
        rec[3073] = 2;
        rec[3073 + 3072] = 51;
        Path f = tmp.resolve("data_batch_1.bin");
        Files.write(f, rec);
        try (ByteImageDataset d = ByteImageDataset.cifar10(List.of(f, f)); Arena arena = Arena.ofConfined()) {
            assertEquals(4, d.size());
            assertArrayEquals(new long[] {3, 32, 32}, d.sampleShape());
            assertEquals(7, d.label(0));
            assertEquals(2, d.label(3));
            MemorySegment buf = arena.allocate(3072 * 4);
            d.sample(3, buf, 0);
            assertEquals(0.2f, buf.getAtIndex(ValueLayout.JAVA_FLOAT, 3071), 1e-7);
            d.sample(2, buf, 0);
            assertEquals(1f, buf.getAtIndex(ValueLayout.JAVA_FLOAT, 0));
        }
        Path bad = tmp.resolve("bad.bin");
        Files.write(bad, new byte[3000]);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ByteImageDataset.cifar10(List.of(bad)));
        assertTrue(e.getMessage().contains("not a whole number of CIFAR-10 records"), e.getMessage());
    }

    @Test
    void everyEpochVisitsEverySampleOnceInASeededOrder() throws Exception {
        Path[] f = org.distill4j.core.TestFiles.writeIdx(tmp, 103);
        try (ByteImageDataset d = ByteImageDataset.idx(f[0], f[1]); DataLoader loader = new DataLoader(d, CpuBackend.get(), 10, true, 42, false)) {
            assertEquals(11, loader.batchesPerEpoch());
            long[] order0 = loader.order(0), order1 = loader.order(1);
            assertFalse(Arrays.equals(order0, order1), "a new order every epoch");
            assertArrayEquals(order0, new DataLoader(d, CpuBackend.get(), 10, true, 42, false).order(0), "same seed, same order");
            for (int epoch = 0; epoch < 2; epoch++) {
                loader.start(epoch, 0);
                Set<Long> seen = new HashSet<>();
                int batches = 0;
                while (loader.hasNext()) {
                    DataLoader.Batch b = loader.next();
                    batches++;
                    float[] x = b.x().toFloatArray();
                    long[] y = b.y().toLongArray();
                    assertEquals(b.rows(), y.length);
                    for (int r = 0; r < b.rows(); r++) {
                        // Recover the sample index from its first pixel and check the label travelled with it.
                        long index = (epoch == 0 ? order0 : order1)[(int) b.firstPosition() + r];
                        assertEquals(((index * 7) % 256) / 255f, x[r * 6]);
                        assertEquals(index % 10, y[r]);
                        assertTrue(seen.add(index));
                    }
                }
                assertEquals(11, batches);
                assertEquals(103, seen.size());
            }
            // Resume in the middle of epoch 1: the same batches as an uninterrupted epoch from batch 4 on.
            loader.start(1, 4);
            DataLoader.Batch b = loader.next();
            assertEquals(40, b.firstPosition());
            assertEquals(order1[40] % 10, b.y().toLongArray()[0]);
        }
    }

    @Test
    void aFailingDatasetSurfacesOnTheCallingThread() {
        Dataset broken = new ArrayDataset(new float[12], new long[] {0, 1, 2, 3}, new long[] {3});
        try (DataLoader loader = new DataLoader(new FailingDataset(broken), CpuBackend.get(), 2, false, 0, false)) {
            loader.start(0, 0);
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> {
                while (loader.hasNext()) loader.next();
            });
            assertEquals("disk went away", e.getMessage());
        }
        assertNotEquals(0, broken.size());
    }

    private record FailingDataset(Dataset inner) implements Dataset {
        @Override public long size() { return inner.size(); }
        @Override public long[] sampleShape() { return inner.sampleShape(); }
        @Override public int classes() { return inner.classes(); }
        @Override public void sample(long index, MemorySegment dst, long at) {
            if (index == 3) throw new IllegalStateException("disk went away");
            inner.sample(index, dst, at);
        }
        @Override public long label(long index) { return inner.label(index); }
        @Override public void close() {}
    }
}
