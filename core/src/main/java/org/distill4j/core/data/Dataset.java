package org.distill4j.core.data;

import java.lang.foreign.MemorySegment;

/**
 * A labelled dataset of fixed-shape float samples. Implementations keep their data memory-mapped
 * or off-heap and convert to float32 only when a batch is assembled.
 */
public interface Dataset extends AutoCloseable {
    /** Number of samples. */
    long size();

    /** Shape of one sample, e.g. [1, 28, 28]. */
    long[] sampleShape();

    /** Number of classes the labels range over (labels are in [0, classes)). */
    int classes();

    /** Writes sample {@code index} as float32 into {@code dst} at element offset {@code at}. */
    void sample(long index, MemorySegment dst, long at);

    /** The label of sample {@code index}. */
    long label(long index);

    /** Elements per sample. */
    default long sampleSize() {
        long n = 1;
        for (long d : sampleShape()) n *= d;
        return n;
    }

    @Override
    void close();
}
