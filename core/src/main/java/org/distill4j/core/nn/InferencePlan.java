package org.distill4j.core.nn;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import org.distill4j.core.ConvGeometry;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.cpu.CpuKernels;
import org.distill4j.core.cpu.CpuMemory;

/**
 * A CPU model compiled for inference: the eval-mode forward pass as a list of steps over
 * preallocated float32 buffers, run on the calling thread. A {@link Workspace} holds one set of
 * buffers for up to {@code maxBatch} rows (one per call in flight, e.g. from the Predictor's pool;
 * made through {@link CpuMemory}, so counted); after it is made, running the plan allocates
 * nothing, on the heap or through {@link CpuMemory}: the kernels are {@link CpuKernels}' range
 * loops (the same arithmetic as the CPU backend, so results equal {@code Model.forward} bit for
 * bit) and gemm is one OpenBLAS downcall per layer (per image for convolutions) on segments sliced
 * when the workspace was made. The weights are the model's own tensors, read, never copied.
 *
 * <p>Buffers: index 0 is the input, each step writes its own buffer (flatten, identity and dropout
 * only alias their input); the last step's buffer is the output.
 */
public final class InferencePlan {
    /** One step of the forward pass for {@code rows} rows. */
    private interface Step {
        void run(Workspace w, int rows);

        /** Per-workspace state (im2col scratch, per-image slices), made once. */
        default void prepare(Workspace w, Arena arena) {}
    }

    private final int maxBatch;
    private final List<Step> steps = new ArrayList<>();
    private final List<Long> bufferFeatures = new ArrayList<>(); // elements per row of each buffer
    private final int inputBuffer, outputBuffer;
    private int stateSlots;
    private final Step[] stepArray;

    private InferencePlan(Model model, int maxBatch) {
        this.maxBatch = maxBatch;
        this.inputBuffer = buffer(Tensor.numel(model.inputShape()));
        long[] shape = model.inputShape();
        int out = compile(model.net(), shape, inputBuffer);
        this.outputBuffer = out;
        this.stepArray = steps.toArray(new Step[0]);
    }

    /** Compiles a model that lives on the CPU backend, for batches of up to {@code maxBatch} rows. */
    public static InferencePlan compile(Model model, int maxBatch) {
        if (maxBatch < 1) throw new IllegalArgumentException("maxBatch must be >= 1, got " + maxBatch);
        for (Parameter p : model.parameters()) {
            if (!p.value().backend().isHost()) {
                throw new IllegalArgumentException("InferencePlan runs models on the CPU backend; " + model.spec().source() + " lives on "
                    + p.value().backend().name());
            }
        }
        return new InferencePlan(model, maxBatch);
    }

    public int maxBatch() { return maxBatch; }

    /** Elements of one input row and one output row. */
    public long inputSize() { return bufferFeatures.get(inputBuffer); }
    public long outputSize() { return bufferFeatures.get(outputBuffer); }

    private int buffer(long featuresPerRow) {
        bufferFeatures.add(featuresPerRow);
        return bufferFeatures.size() - 1;
    }

    /** Adds the steps of a sequential block reading buffer {@code in} of per-row shape {@code shape}; returns its output buffer. */
    private int compile(Layers.Sequential seq, long[] shape, int in) {
        int current = in;
        long[] s = shape;
        for (Layer layer : seq.layers()) {
            long[] next = layer.outputShape(s);
            current = compile(layer, s, next, current);
            s = next;
        }
        return current;
    }

    private int compile(Layer layer, long[] s, long[] next, int in) {
        switch (layer) {
            case Layers.Linear l -> {
                int out = buffer(l.outFeatures());
                int k = (int) l.inFeatures(), n = (int) l.outFeatures();
                MemorySegment w = l.w().data(), b = l.b() == null ? null : l.b().data();
                steps.add((ws, rows) -> {
                    // y [rows, n] = x [rows, k] W^T, W [n, k]: the call CpuBackend.gemm(false, true, ...) makes.
                    CpuBlas.sgemm(false, true, rows, n, k, 1f, ws.buffers[in], k, w, k, 0f, ws.buffers[out], n);
                    if (b != null) CpuKernels.biasAddRows(ws.buffers[out], b, 0, rows, n);
                });
                return out;
            }
            case Layers.Conv2d c -> {
                int out = buffer(Tensor.numel(next));
                ConvGeometry g = new ConvGeometry(maxBatch, (int) s[0], (int) s[1], (int) s[2], (int) next[0], (int) c.kernel(), (int) c.kernel(),
                    (int) next[1], (int) next[2]);
                MemorySegment w = c.w().data(), b = c.b() == null ? null : c.b().data();
                int slot = stateSlots++;
                long imageIn = (long) g.c() * g.h() * g.w(), imageOut = (long) g.k() * g.ohw();
                steps.add(new Step() {
                    @Override
                    public void prepare(Workspace ws, Arena arena) {
                        MemorySegment[] state = new MemorySegment[maxBatch + 1];
                        state[0] = CpuMemory.allocate(arena, (long) g.crs() * g.ohw() * Float.BYTES, 64); // im2col of one image
                        for (int i = 0; i < maxBatch; i++) state[i + 1] = ws.buffers[out].asSlice(i * imageOut * Float.BYTES, imageOut * Float.BYTES);
                        ws.state[slot] = state;
                    }

                    @Override
                    public void run(Workspace ws, int rows) {
                        MemorySegment[] state = ws.state[slot];
                        for (int i = 0; i < rows; i++) {
                            CpuKernels.im2col(ws.buffers[in], i * imageIn, g, c.geometry(), state[0]);
                            CpuBlas.sgemm(false, false, g.k(), g.ohw(), g.crs(), 1f, w, g.crs(), state[0], g.ohw(), 0f, state[i + 1], g.ohw());
                        }
                        if (b != null) CpuKernels.biasAddPlanes(ws.buffers[out], b, 0, (long) rows * g.k(), g.k(), g.ohw());
                    }
                });
                return out;
            }
            case Layers.BatchNorm bn -> {
                int out = buffer(Tensor.numel(next));
                long channels = s[0], plane = s.length == 1 ? 1 : Tensor.numel(s) / s[0];
                MemorySegment gamma = bn.gamma().data(), beta = bn.beta().data(), mean = bn.mean().data(), var = bn.var().data();
                float eps = bn.eps();
                steps.add((ws, rows) -> CpuKernels.batchNormEval(ws.buffers[in], ws.buffers[out], gamma, beta, mean, var, eps, 0, rows * channels, channels,
                    plane));
                return out;
            }
            case Layers.Act a -> {
                int out = buffer(Tensor.numel(next));
                long features = Tensor.numel(s);
                steps.add((ws, rows) -> CpuKernels.activation(a.activation(), a.param(), ws.buffers[in], ws.buffers[out], 0, rows * features));
                return out;
            }
            case Layers.Pool p -> {
                int out = buffer(Tensor.numel(next));
                long channels = s[0], h = s[1], w = s[2], oh = next[1], ow = next[2];
                steps.add((ws, rows) -> CpuKernels.pool2d(p.mode(), p.geometry(), ws.buffers[in], ws.buffers[out], 0, rows * channels, h, w, oh, ow));
                return out;
            }
            case Layers.GlobalAvgPool gap -> {
                int out = buffer(Tensor.numel(next));
                long channels = s[0], hw = s[1] * s[2];
                steps.add((ws, rows) -> CpuKernels.meanRows(ws.buffers[in], ws.buffers[out], 0, rows * channels, hw));
                return out;
            }
            case Layers.Residual r -> {
                int body = compile(r.body(), s, in);
                int shortcut = r.shortcut() == null ? in : compile(r.shortcut(), s, in);
                int out = buffer(Tensor.numel(next));
                long features = Tensor.numel(next);
                steps.add((ws, rows) -> CpuKernels.add(ws.buffers[body], ws.buffers[shortcut], ws.buffers[out], 0, rows * features));
                return out;
            }
            case Layers.Sequential seq -> {
                return compile(seq, s, in);
            }
            case Layers.Flatten f -> {
                return in; // the same bytes, viewed as [N, prod]
            }
            case Layers.Identity i -> {
                return in;
            }
            case Layers.Dropout d -> {
                return in; // identity in eval mode
            }
            default -> throw new IllegalArgumentException("InferencePlan: layer kind " + layer.kind() + " is not supported");
        }
    }

    /** Buffers for one call at a time (not thread-safe): made once, reused by every call; close frees them. */
    public final class Workspace implements AutoCloseable {
        private final Arena arena = Arena.ofShared();
        final MemorySegment[] buffers;
        final MemorySegment[][] state;

        private Workspace() {
            buffers = new MemorySegment[bufferFeatures.size()];
            for (int i = 0; i < buffers.length; i++) buffers[i] = CpuMemory.allocate(arena, Math.max(4, (long) maxBatch * bufferFeatures.get(i) * Float.BYTES), 64);
            state = new MemorySegment[stateSlots][];
            for (Step s : steps) s.prepare(this, arena);
        }

        /** Where the caller writes {@code rows x inputSize()} floats before {@link #run}. */
        public MemorySegment input() { return buffers[inputBuffer]; }

        /** Where {@link #run} leaves {@code rows x outputSize()} floats. */
        public MemorySegment output() { return buffers[outputBuffer]; }

        /** The forward pass for the first {@code rows} rows of {@link #input()}. */
        public void run(int rows) {
            if (rows < 1 || rows > maxBatch) throw new IllegalArgumentException("rows must be in [1, " + maxBatch + "], got " + rows);
            for (int i = 0; i < stepArray.length; i++) stepArray[i].run(this, rows); // indexed: no iterator per call
        }

        @Override
        public void close() {
            arena.close();
        }
    }

    public Workspace newWorkspace() {
        return new Workspace();
    }
}
