package org.distill4j.core.data;

import java.lang.foreign.MemorySegment;

/**
 * A labelled dataset of fixed-shape float samples, handed to the loader one sample at a time as
 * float32. Where the data lives is the implementation's choice: {@link ByteImageDataset} (MNIST
 * IDX, CIFAR-10) keeps the files memory-mapped and converts bytes to float32 only when a batch is
 * assembled; {@link ArrayDataset} (float32 .npy, the synthetic tasks) holds its samples in a
 * {@code float[]} on the Java heap, 4 bytes a value, so a .npy dataset must fit in the heap.
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
