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
 *
 * <p>Layout: a CPU tensor's storage may hold oneDNN's channel-blocked {@link Layout#NCHW16C}
 * instead of row-major between the backend ops that read and write it (convolution, batch norm,
 * the elementwise ops), so that a CNN's activations are not reordered around every oneDNN call.
 * The shape stays the logical [N, C, H, W]. {@link #data()} always gives row-major storage: it
 * converts a blocked tensor back first, so code that does not know the layout sees what it always
 * did; the ops that do know it read {@link #storage()} and {@link #layout()}. Only a tensor whose
 * storage the backend allocated for it alone, and that was never viewed, can hold a blocked layout
 * ({@link #mayHoldLayout()}), so no other tensor ever reads the same bytes as row-major.
 */
public final class Tensor implements AutoCloseable {
    /** How a tensor's storage holds its elements. */
    public enum Layout {
        /** Row-major (PyTorch's contiguous; NCHW for images): what {@link #data()} always gives. */
        ROW_MAJOR,
        /**
         * oneDNN's nChw16c, for a rank-4 float32 [N, C, H, W] with C a multiple of 16: element
         * (n, c, h, w) at ((n C/16 + c/16) H W + h W + w) 16 + c % 16. Same size as row-major.
         */
        NCHW16C
    }

    private final Backend backend;
    private final DType dtype;
    private final long[] shape;
    private final long numel;
    private final MemorySegment data;
    private final Arena owned; // non-null when this tensor owns its memory
    /** The layout of the storage now; not ROW_MAJOR only while {@link #sole}. */
    private Layout layout = Layout.ROW_MAJOR;
    /** The backend allocated the storage for this tensor alone and no view of it was made: it may hold another layout. */
    private boolean sole;

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

    /**
     * For backends: wraps storage they have just allocated for this tensor alone, so that it may
     * hold another {@link Layout} (see the class comment).
     */
    public static Tensor allocated(Backend backend, DType dtype, long[] shape, MemorySegment data, Arena owned) {
        Tensor t = wrap(backend, dtype, shape, data, owned);
        t.sole = true;
        return t;
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
        MemorySegment s = storage();
        if (layout != Layout.ROW_MAJOR) backend.toRowMajor(this);
        return s;
    }

    /**
     * For backend ops that know {@link #layout()}: the storage as it is, in whatever layout it holds
     * (no conversion), after checking the tensor is alive.
     */
    public MemorySegment storage() {
        if (!isAlive()) throw new IllegalStateException("tensor " + describe() + " is closed (its memory was freed)");
        return data;
    }

    /** The layout the storage holds now (ROW_MAJOR unless a backend op left it otherwise). */
    public Layout layout() { return layout; }

    /**
     * Whether this tensor may hold {@link Layout#NCHW16C}: float32, rank 4, channels a multiple of
     * 16, and storage the backend allocated for it alone, never viewed.
     */
    public boolean mayHoldLayout() {
        return sole && dtype == DType.F32 && shape.length == 4 && shape[1] % 16 == 0;
    }

    /**
     * For backend ops: records that the storage now holds {@code l} (the op has just written it so,
     * or converted it). IllegalStateException for a blocked layout this tensor may not hold.
     */
    public void setLayout(Layout l) {
        if (l != Layout.ROW_MAJOR && !mayHoldLayout()) throw new IllegalStateException("setLayout: " + describe() + " cannot hold " + l);
        layout = l;
    }

    /** The row-major storage for a new view: another tensor will read these bytes as row-major, so this one stays row-major. */
    private MemorySegment storageForView() {
        MemorySegment rowMajor = data();
        sole = false;
        return rowMajor;
    }

    /** A view with another shape of the same number of elements, sharing storage. */
    public Tensor view(long... newShape) {
        if (numel(newShape) != numel) {
            throw new IllegalArgumentException("view: cannot view " + Arrays.toString(shape) + " (" + numel + " elements) as "
                + Arrays.toString(newShape) + " (" + numel(newShape) + " elements)");
        }
        return new Tensor(backend, dtype, newShape, storageForView(), null);
    }

    /** A view of rows [start, start + count) along dimension 0, sharing storage. */
    public Tensor narrow0(long start, long count) {
        if (shape.length == 0 || start < 0 || count < 0 || start + count > shape[0]) {
            throw new IndexOutOfBoundsException("narrow0: rows [" + start + ", " + (start + count) + ") of " + Arrays.toString(shape));
        }
        long[] s = shape.clone();
        s[0] = count;
        long rowBytes = numel / Math.max(1, shape[0]) * dtype.bytes();
        return new Tensor(backend, dtype, s, backend.offset(storageForView(), start * rowBytes, count * rowBytes), null);
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
