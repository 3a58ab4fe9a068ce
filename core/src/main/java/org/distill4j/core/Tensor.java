package org.distill4j.core;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

/**
 * A dense row-major tensor (PyTorch's contiguous layout; NCHW for images) on one backend.
 *
 * <p>Storage is a MemorySegment: on the CPU a real, readable segment of {@link #byteSize()} bytes;
 * on CUDA a zero-length segment whose address is the device pointer (see DeviceBuffer). Either way
 * its scope is the Arena that owns the memory: a tensor created with its own arena frees it on
 * {@link #close()}; a tensor created in a caller's arena (a scope for a whole step) lives until that
 * arena closes; a view shares its base's storage and lifetime. Using a tensor after its memory is
 * freed throws IllegalStateException.
 */
public final class Tensor implements AutoCloseable {
    private final Backend backend;
    private final DType dtype;
    private final long[] shape;
    private final long numel;
    private final MemorySegment data;
    private final Arena owned; // non-null when this tensor owns its memory

    Tensor(Backend backend, DType dtype, long[] shape, MemorySegment data, Arena owned) {
        this.backend = backend;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.numel = numel(shape);
        this.data = data;
        this.owned = owned;
    }

    /** For backends: wraps storage they allocated. {@code owned} is the arena this tensor closes, or null. */
    public static Tensor wrap(Backend backend, DType dtype, long[] shape, MemorySegment data, Arena owned) {
        for (long d : shape) if (d < 0) throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
        return new Tensor(backend, dtype, shape, data, owned);
    }

    public static long numel(long... shape) {
        long n = 1;
        for (long d : shape) n = Math.multiplyExact(n, d);
        return n;
    }

    public Backend backend() { return backend; }
    public DType dtype() { return dtype; }
    public long[] shape() { return shape.clone(); }

    /** Whether this tensor has shape {@code s}, without copying the shape (the per-op checks of {@link Shapes}). */
    boolean hasShape(long[] s) { return java.util.Arrays.equals(shape, s); }

    /** Whether both tensors have the same shape, without copying either. */
    boolean sameShape(Tensor other) { return java.util.Arrays.equals(shape, other.shape); }
    public int rank() { return shape.length; }
    public long size(int dim) { return shape[dim < 0 ? shape.length + dim : dim]; }
    public long numel() { return numel; }
    public long byteSize() { return numel * dtype.bytes(); }

    /** Rows of the tensor viewed as a matrix [numel / lastDim, lastDim]. */
    public long rows() { return shape.length == 0 ? 1 : numel / Math.max(1, shape[shape.length - 1]); }

    /** Length of the last dimension (1 for a scalar). */
    public long cols() { return shape.length == 0 ? 1 : shape[shape.length - 1]; }

    /** True until the memory behind this tensor is freed. */
    public boolean isAlive() { return data.scope().isAlive(); }

    /**
     * The storage segment, after checking the tensor is alive. CPU: readable, {@link #byteSize()}
     * long. CUDA: zero-length, its address is the device pointer.
     */
    public MemorySegment data() {
        if (!isAlive()) throw new IllegalStateException("tensor " + describe() + " is closed (its memory was freed)");
        return data;
    }

    /** A view with another shape of the same number of elements, sharing storage. */
    public Tensor view(long... newShape) {
        if (numel(newShape) != numel) {
            throw new IllegalArgumentException("view: cannot view " + Arrays.toString(shape) + " (" + numel + " elements) as "
                + Arrays.toString(newShape) + " (" + numel(newShape) + " elements)");
        }
        return new Tensor(backend, dtype, newShape, data(), null);
    }

    /** A view of rows [start, start + count) along dimension 0, sharing storage. */
    public Tensor narrow0(long start, long count) {
        if (shape.length == 0 || start < 0 || count < 0 || start + count > shape[0]) {
            throw new IndexOutOfBoundsException("narrow0: rows [" + start + ", " + (start + count) + ") of " + Arrays.toString(shape));
        }
        long[] s = shape.clone();
        s[0] = count;
        long rowBytes = numel / Math.max(1, shape[0]) * dtype.bytes();
        return new Tensor(backend, dtype, s, backend.offset(data(), start * rowBytes, count * rowBytes), null);
    }

    /** Copies the elements to a new float array (F32, or BF16 widened exactly); synchronises on a GPU. */
    public float[] toFloatArray() {
        if (dtype == DType.BF16) {
            float[] out = new float[Math.toIntExact(numel)];
            // A shared arena, as in the CPU kernels: a confined one gives the segment accessors they
            // inline a second profile (measured 4-5x slower steps; bench/RESULTS.md, TeacherCache).
            try (Arena a = Arena.ofShared()) {
                MemorySegment host = a.allocate(Math.max(2, byteSize()), 8);
                backend.copyToHost(this, host);
                for (int i = 0; i < out.length; i++) out[i] = Bf16.toFloat(host.getAtIndex(ValueLayout.JAVA_SHORT, i));
            }
            return out;
        }
        requireDType(DType.F32, "toFloatArray");
        return backend.read(this);
    }

    /** Copies the elements to a new long array (I64 only); synchronises on a GPU. */
    public long[] toLongArray() {
        requireDType(DType.I64, "toLongArray");
        return backend.readLongs(this);
    }

    /** Overwrites the elements (F32, or BF16 rounded to nearest even; the array length must equal numel). */
    public Tensor copyFrom(float[] values) {
        if (dtype != DType.BF16) requireDType(DType.F32, "copyFrom");
        if (values.length != numel) throw new IllegalArgumentException("copyFrom: " + values.length + " values for " + describe());
        if (dtype == DType.F32) {
            backend.write(this, values);
            return this;
        }
        try (Arena a = Arena.ofShared()) {
            MemorySegment host = a.allocate(Math.max(2, byteSize()), 8).asSlice(0, byteSize());
            for (int i = 0; i < values.length; i++) host.setAtIndex(ValueLayout.JAVA_SHORT, i, Bf16.fromFloat(values[i]));
            backend.copyFromHost(host, this);
        }
        return this;
    }

    /** Overwrites the elements (I64). */
    public Tensor copyFrom(long[] values) {
        requireDType(DType.I64, "copyFrom");
        if (values.length != numel) throw new IllegalArgumentException("copyFrom: " + values.length + " values for " + describe());
        backend.writeLongs(this, values);
        return this;
    }

    /** The single value of a one-element F32 tensor; synchronises on a GPU. */
    public float item() {
        if (numel != 1) throw new IllegalArgumentException("item: " + describe() + " has " + numel + " elements, not 1");
        return toFloatArray()[0];
    }

    void requireDType(DType expected, String op) {
        if (dtype != expected) throw new IllegalArgumentException(op + ": needs " + expected + ", got " + describe());
    }

    /** e.g. "F32[256, 784] on cpu". */
    public String describe() {
        return dtype + Arrays.toString(shape) + " on " + backend.name();
    }

    @Override
    public String toString() {
        return "Tensor " + describe();
    }

    /** Frees the memory if this tensor owns it; views and tensors in a caller's arena are left alone. */
    @Override
    public void close() {
        if (owned != null && owned.scope().isAlive()) owned.close();
    }
}
