package org.distill4j.core.data;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.Arrays;
import org.distill4j.core.io.Npy;

/**
 * A dataset from a float32 .npy of samples [N, ...] and an integer .npy of labels [N], held on the
 * Java heap (samples as one {@code float[]}, at most 2^31 - 1 values; labels as a {@code long[]}).
 */
public final class ArrayDataset implements Dataset {
    private final float[] x;
    private final long[] y;
    private final long[] shape;
    private final int classes;

    public ArrayDataset(float[] x, long[] y, long[] sampleShape) {
        long per = 1;
        for (long d : sampleShape) per *= d;
        if (x.length != per * y.length) throw new IllegalArgumentException("dataset: " + x.length + " values for " + y.length + " samples of " + Arrays.toString(sampleShape));
        this.x = x;
        this.y = y;
        this.shape = sampleShape.clone();
        int c = 0;
        for (long v : y) {
            if (v < 0) throw new IllegalArgumentException("dataset: negative label " + v);
            c = (int) Math.max(c, v + 1);
        }
        this.classes = c;
    }

    public static ArrayDataset npy(Path samples, Path labels) throws IOException {
        Npy.Array a = Npy.read(samples), b = Npy.read(labels);
        if (a.type() != Npy.Type.F32) throw new IllegalArgumentException(samples + ": samples must be float32, got " + a.type().name().toLowerCase(java.util.Locale.ROOT));
        if (a.shape().length < 2) throw new IllegalArgumentException(samples + ": samples must be [N, ...], got " + Arrays.toString(a.shape()));
        if (b.shape().length != 1 || b.shape()[0] != a.shape()[0]) {
            throw new IllegalArgumentException(labels + ": labels must be [" + a.shape()[0] + "], got " + Arrays.toString(b.shape()));
        }
        return new ArrayDataset(a.toFloats(), b.toLongs(labels.toString()), Arrays.copyOfRange(a.shape(), 1, a.shape().length));
    }

    @Override public long size() { return y.length; }
    @Override public long[] sampleShape() { return shape.clone(); }
    @Override public int classes() { return classes; }

    @Override
    public void sample(long index, MemorySegment dst, long at) {
        long n = sampleSize();
        MemorySegment.copy(x, (int) (index * n), dst, JAVA_FLOAT, at * 4, (int) n);
    }

    @Override public long label(long index) { return y[(int) index]; }
    @Override public void close() {}
}
