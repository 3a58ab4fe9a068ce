package org.distill4j.core.nn;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.cpu.CpuKernels;
import org.distill4j.core.cpu.CpuMemory;
import org.distill4j.core.cpu.OnednnInferenceConv;

/**
 * A CPU model compiled for inference: the eval-mode forward pass as a list of steps over
 * preallocated float32 buffers, run on the calling thread. A {@link Workspace} holds one set of
 * buffers for up to {@code maxBatch} rows (one per call in flight, e.g. from the Predictor's pool;
 * made through {@link CpuMemory}, so counted); after it is made, running the plan of a model of
 * built-in layers allocates nothing, on the heap or through {@link CpuMemory}: the kernels are {@link CpuKernels}' range
 * loops (the same arithmetic as the CPU backend) and gemm is one downcall per layer (per image for
 * convolutions) on segments sliced when the workspace was made. On the oneDNN engine a linear
 * layer packs its weights once, when the plan is compiled, into oneDNN's blocked layout
 * ({@link org.distill4j.core.cpu.OnednnPackedMatmul}), and a plan compiled without
 * {@code weightsFixed} copies the other linear layers' weights too; a convolution is fused with
 * the eval batch norm, ReLU and residual add after it ({@link OnednnInferenceConv}: the batch norm
 * folded into a copy of its weights, reordered once), and activations between fused convolutions
 * stay channel-blocked ({@link Builder#blocked}). So on that engine the plan serves the linear and
 * convolution weights (and batch-norm statistics) as they were then (a snapshot: writing the
 * model's tensors afterwards does not change them; compile a new plan to serve new weights), and
 * its results equal {@code Model.forward} within float32 rounding (folding rounds differently;
 * -Ddistill4j.onednn.fuse=false keeps convolutions unfused, reading the model's tensors). On the
 * other engines the plan reads the model's tensors in place and equals {@code Model.forward} bit
 * for bit.
 * {@link #close()} frees the packed copies.
 *
 * <p><b>bf16</b> ({@link #compile(Model, int, boolean, DType)} with {@link DType#BF16}: a frozen
 * teacher or a Predictor asked to run in bf16; issue 23): every matrix product and convolution
 * takes its weights rounded to bfloat16 (nearest even) and its input rounded to bfloat16 (nearest
 * even), products summed in float32; biases, activations, pooling, norms and the output stay
 * float32 (the recipe of the bf16 decoders). On the oneDNN engine linear layers run a bf16 packed
 * matmul ({@link org.distill4j.core.cpu.OnednnPackedMatmul} with bf16) and convolutions im2col then
 * oneDNN's bf16 matmul ({@link CpuBlas#gemmBf16}); on the OpenBLAS and Java engines, which have no
 * bf16 product, both run {@link CpuBlas#gemmBf16}'s Java loop: the same numerics, slowly. A layer
 * with parameters but no compiled step of its own cannot run in bf16 (its eval forward is float32),
 * so compiling it in bf16 throws.
 *
 * <p>Buffers: index 0 is the input, each step writes its own buffer (flatten, identity and dropout
 * only alias their input); the last step's buffer is the output. Each layer adds its own steps
 * ({@link Layer#compileInference}); a layer without a plan of its own runs its eval forward
 * ({@link Builder#forwardStep}), which allocates per call.
 */
public final class InferencePlan {
    /**
     * One step of the forward pass for {@code rows} rows, reading and writing workspace buffers. A
     * step must allocate nothing in {@link #run} (the plan's promise), and may run on any thread,
     * concurrently with other workspaces' runs: it keeps per-call state only in its workspace.
     */
    public interface Step {
        void run(Workspace w, int rows);

        /** Per-workspace state (im2col scratch, per-image slices), made once when a workspace is made. */
        default void prepare(Workspace w, Arena arena) {}
    }

    /**
     * What a layer's {@link Layer#compileInference} adds its steps to: buffers are numbered,
     * float32, {@code maxBatch} rows of a fixed number of elements each.
     */
    public static final class Builder {
        private final int maxBatch;
        private final boolean weightsFixed;
        private final boolean bf16;
        private final List<Step> steps = new ArrayList<>();
        private final List<Long> bufferFeatures = new ArrayList<>(); // elements per row of each buffer
        private final List<Boolean> blockedBuffers = new ArrayList<>(); // whether each buffer is channel-blocked (nChw16c)
        private final java.util.Map<Integer, Integer> plainCopies = new java.util.HashMap<>(); // blocked buffer -> its NCHW copy
        private final java.util.Map<Integer, Integer> bf16Copies = new java.util.HashMap<>(); // buffer -> state slot of its bf16 copy
        private final boolean fuse = OnednnInferenceConv.enabled(); // once per plan: every layer of it decides alike
        private final List<AutoCloseable> owned = new ArrayList<>();
        private Arena constants;
        private int stateSlots, localSlots;

        private Builder(int maxBatch, boolean weightsFixed, boolean bf16) {
            this.maxBatch = maxBatch;
            this.weightsFixed = weightsFixed;
            this.bf16 = bf16;
        }

        /**
         * Whether matrix products and convolutions run in bf16: weights and inputs rounded to
         * bfloat16 (nearest even), float32 sums (see the class comment).
         */
        public boolean bf16() { return bf16; }

        public int maxBatch() { return maxBatch; }

        /**
         * Whether the compiler promised that the model's weights do not change while the plan
         * lives: a step that keeps a copy of them (packed weights) may then also read them in place;
         * otherwise it reads only its own copies.
         */
        public boolean weightsFixed() { return weightsFixed; }

        /** A new buffer of {@code featuresPerRow} float32 elements per row; returns its index. */
        public int buffer(long featuresPerRow) {
            bufferFeatures.add(featuresPerRow);
            blockedBuffers.add(false);
            return bufferFeatures.size() - 1;
        }

        /**
         * Whether layers fuse here ({@link OnednnInferenceConv#enabled}: the oneDNN engine, float32
         * or bf16; -Ddistill4j.onednn.fuse=false turns it off): a convolution with the eval-mode
         * batch norm, ReLU and residual add after it runs as one primitive on weights packed once,
         * activations between such convolutions stay channel-blocked ({@link #blocked}), and a
         * packed float32 Linear takes the ReLU after it as its post-op.
         */
        public boolean fuses() {
            return fuse;
        }

        /**
         * The state slot ({@link Workspace#state(int)}, element 0) of buffer {@code b} rounded to
         * bfloat16 (nearest even) in its own layout, per row shape {@code shape} [C, H, W]: a bf16
         * convolution's input. The rounding step is added once per buffer, on its first use.
         */
        public int bf16Source(int b, long[] shape) {
            Integer slot = bf16Copies.get(b);
            if (slot != null) return slot;
            int st = stateSlot();
            long perRow = Tensor.numel(shape);
            int c = (int) shape[0], h = (int) shape[1], w = (int) shape[2];
            boolean blockedIn = blocked(b);
            int rowsMax = maxBatch;
            add(new Step() {
                @Override
                public void prepare(Workspace ws, Arena arena) {
                    ws.state(st, new MemorySegment[] {CpuMemory.allocate(arena, rowsMax * perRow * Short.BYTES, 64)});
                }

                @Override
                public void run(Workspace ws, int rows) {
                    OnednnInferenceConv.toBf16(ws.buffer(b), ws.state(st)[0], rows, c, h, w, blockedIn);
                }
            });
            bf16Copies.put(b, st);
            return st;
        }

        /**
         * A new buffer for channel-blocked activations: per row [C/16, H, W, 16] (oneDNN's nChw16c;
         * C a multiple of 16, so the same number of elements as [C, H, W]); returns its index.
         */
        public int blockedBuffer(long featuresPerRow) {
            int b = buffer(featuresPerRow);
            blockedBuffers.set(b, true);
            return b;
        }

        /** Whether buffer {@code b} holds channel-blocked activations (nChw16c) rather than NCHW. */
        public boolean blocked(int b) {
            return blockedBuffers.get(b);
        }

        /** A new buffer of {@code like}'s layout (an elementwise layer's output). */
        public int bufferLike(int like, long featuresPerRow) {
            return blocked(like) ? blockedBuffer(featuresPerRow) : buffer(featuresPerRow);
        }

        /**
         * Buffer {@code b} in NCHW: itself when plain; for a blocked one, a new buffer that a step
         * (added once per buffer, on its first use) fills by reordering, per row shape
         * {@code shape} [C, H, W].
         */
        public int plain(int b, long[] shape) {
            if (!blocked(b)) return b;
            Integer copy = plainCopies.get(b);
            if (copy != null) return copy;
            if (shape.length != 3) throw new IllegalStateException("a blocked buffer holds [C, H, W] rows, got shape " + java.util.Arrays.toString(shape));
            int out = buffer(Tensor.numel(shape));
            int c = (int) shape[0], h = (int) shape[1], w = (int) shape[2];
            add((ws, rows) -> OnednnInferenceConv.toPlain(ws.buffer(b), ws.buffer(out), rows, c, h, w));
            plainCopies.put(b, out);
            return out;
        }

        /** A slot for per-workspace state ({@link Workspace#state(int)}), set by a step's prepare. */
        public int stateSlot() {
            return stateSlots++;
        }

        /**
         * A slot for a per-workspace Java object ({@link Workspace#local(int)}), set by a step's
         * prepare; closed with the workspace when it is {@link AutoCloseable} (e.g. an execution
         * context of a oneDNN primitive).
         */
        public int localSlot() {
            return localSlots++;
        }

        /**
         * Hands the plan a resource its steps share (e.g. packed weights), closed by
         * {@link InferencePlan#close()} after the workspaces; returns it.
         */
        public <T extends AutoCloseable> T own(T resource) {
            owned.add(resource);
            return resource;
        }

        /** A copy of {@code data} in native memory the plan owns (freed by {@link InferencePlan#close()}): a step's snapshot of weights. */
        public MemorySegment copyOf(MemorySegment data) {
            if (constants == null) constants = own(Arena.ofShared());
            MemorySegment copy = constants.allocate(Math.max(1, data.byteSize()), 64).asSlice(0, data.byteSize());
            MemorySegment.copy(data, 0, copy, 0, data.byteSize());
            return copy;
        }

        /**
         * {@code count} float32 values of {@code data} rounded to bfloat16 (nearest even), in native
         * memory the plan owns: a step's bf16 weights (W [n, k] stays [n, k], 2 bytes an element).
         */
        public MemorySegment bf16CopyOf(MemorySegment data, long count) {
            if (data.byteSize() < count * Float.BYTES) {
                throw new IllegalArgumentException("bf16 copy: " + count + " floats need " + count * Float.BYTES + " bytes, the segment holds " + data.byteSize());
            }
            if (constants == null) constants = own(Arena.ofShared());
            MemorySegment copy = constants.allocate(Math.max(2, count * Short.BYTES), 64).asSlice(0, count * Short.BYTES);
            org.distill4j.core.cpu.CpuKernels.toBf16(data, copy, count);
            return copy;
        }

        /** Appends a step; steps run in the order they are added. */
        public void add(Step step) {
            steps.add(step);
        }

        /**
         * Adds {@code layer}'s steps for an input in buffer {@code in} of per-row shape {@code shape}
         * (what a layer with children calls for each child); returns the buffer holding its output.
         */
        public int compile(Layer layer, long[] shape, int in) {
            int input = blocked(in) && !layer.compilesBlocked() ? plain(in, shape) : in;
            return layer.compileInference(this, shape, layer.outputShape(shape), input);
        }

        /**
         * The step of a layer with no plan of its own: its eval-mode {@link Layer#forward} on the CPU
         * backend, over the workspace's buffers wrapped as tensors, into a new buffer. Unlike the
         * plan's own steps this allocates per call (tensor objects, and what the forward allocates in
         * a per-call arena), and the layer's eval forward must keep no state (the Layer contract),
         * since calls run concurrently. Returns the output buffer.
         */
        public int forwardStep(Layer layer, long[] inShape, long[] outShape, int in) {
            if (bf16 && !layer.parameters().isEmpty()) {
                throw new IllegalArgumentException("layer " + layer.kind() + " has no compiled inference step, so it cannot run in bf16 (its forward is float32); "
                    + "run this model in f32");
            }
            int out = buffer(Tensor.numel(outShape));
            long inElems = Tensor.numel(inShape), outElems = Tensor.numel(outShape);
            Backend cpu = CpuBackend.get();
            add((ws, rows) -> {
                try (Arena arena = Arena.ofShared()) { // shared: the CPU backend's ops may run in fork-join tasks
                    Tensor x = Tensor.wrap(cpu, DType.F32, Layer.withBatch(rows, inShape), ws.buffer(in).asSlice(0, rows * inElems * Float.BYTES), null);
                    Tensor y = layer.forward(new Layer.Pass(cpu, arena, false, 0, 0), x);
                    if (!java.util.Arrays.equals(y.shape(), Layer.withBatch(rows, outShape)) || y.dtype() != DType.F32) {
                        throw new IllegalStateException(layer.kind() + ".forward gave " + y.describe() + ", its outputShape says F32"
                            + java.util.Arrays.toString(Layer.withBatch(rows, outShape)));
                    }
                    MemorySegment.copy(y.data(), 0, ws.buffer(out), 0, rows * outElems * Float.BYTES);
                }
            });
            return out;
        }
    }

    private final int maxBatch;
    private final List<Step> steps;
    private final List<Long> bufferFeatures;
    private final int inputBuffer, outputBuffer;
    private final int stateSlots, localSlots;
    private final Step[] stepArray;
    private final List<AutoCloseable> owned;

    private final DType computeDtype;

    private InferencePlan(Model model, int maxBatch, boolean weightsFixed, DType computeDtype) {
        this.maxBatch = maxBatch;
        this.computeDtype = computeDtype;
        Builder b = new Builder(maxBatch, weightsFixed, computeDtype == DType.BF16);
        this.inputBuffer = b.buffer(Tensor.numel(model.inputShape()));
        this.outputBuffer = b.plain(b.compile(model.net(), model.inputShape(), inputBuffer), model.net().outputShape(model.inputShape()));
        this.steps = List.copyOf(b.steps);
        this.bufferFeatures = List.copyOf(b.bufferFeatures);
        this.stateSlots = b.stateSlots;
        this.localSlots = b.localSlots;
        this.stepArray = steps.toArray(new Step[0]);
        this.owned = List.copyOf(b.owned);
    }

    /**
     * Compiles a model that lives on the CPU backend, for batches of up to {@code maxBatch} rows.
     * The model's weights may change afterwards: steps that copy weights read only their copies.
     */
    public static InferencePlan compile(Model model, int maxBatch) {
        return compile(model, maxBatch, false);
    }

    /**
     * As {@link #compile(Model, int)}; with {@code weightsFixed} the caller promises the model's
     * weights do not change while the plan lives (the Predictor that loaded the model, a frozen
     * teacher during fit), so steps that keep packed copies also read the originals in place
     * instead of keeping a second, plain copy.
     */
    public static InferencePlan compile(Model model, int maxBatch, boolean weightsFixed) {
        return compile(model, maxBatch, weightsFixed, DType.F32);
    }

    /**
     * As {@link #compile(Model, int, boolean)}, with matrix products and convolutions in
     * {@code computeDtype}: {@link DType#F32}, or {@link DType#BF16} (bf16 weights and inputs,
     * float32 sums; see the class comment).
     */
    public static InferencePlan compile(Model model, int maxBatch, boolean weightsFixed, DType computeDtype) {
        if (computeDtype != DType.F32 && computeDtype != DType.BF16) {
            throw new IllegalArgumentException("an inference plan computes in F32 or BF16, got " + computeDtype);
        }
        if (maxBatch < 1) throw new IllegalArgumentException("maxBatch must be >= 1, got " + maxBatch);
        for (Parameter p : model.parameters()) {
            if (!p.value().backend().isHost()) {
                throw new IllegalArgumentException("InferencePlan runs models on the CPU backend; " + model.spec().source() + " lives on "
                    + p.value().backend().name());
            }
        }
        return new InferencePlan(model, maxBatch, weightsFixed, computeDtype);
    }

    public int maxBatch() { return maxBatch; }

    /** F32, or BF16: matrix products and convolutions on bf16 weights and inputs with float32 sums. */
    public DType computeDtype() { return computeDtype; }

    /** The number of steps (tests: what fused). */
    int stepCount() { return steps.size(); }

    /** Elements of one input row and one output row. */
    public long inputSize() { return bufferFeatures.get(inputBuffer); }
    public long outputSize() { return bufferFeatures.get(outputBuffer); }

    /** Buffers for one call at a time (not thread-safe): made once, reused by every call; close frees them. */
    public final class Workspace implements AutoCloseable {
        private final Arena arena = Arena.ofShared();
        final MemorySegment[] buffers;
        final MemorySegment[][] state;
        final Object[] locals;

        private Workspace() {
            buffers = new MemorySegment[bufferFeatures.size()];
            for (int i = 0; i < buffers.length; i++) buffers[i] = CpuMemory.allocate(arena, Math.max(4, (long) maxBatch * bufferFeatures.get(i) * Float.BYTES), 64);
            state = new MemorySegment[stateSlots][];
            locals = new Object[localSlots];
            try {
                for (Step s : steps) s.prepare(this, arena);
            } catch (RuntimeException e) {
                close();
                throw e;
            }
        }

        /** The per-workspace object of {@code slot} ({@link Builder#localSlot()}), as its step's prepare set it. */
        public Object local(int slot) {
            return locals[slot];
        }

        /** For a step's prepare. */
        public void local(int slot, Object value) {
            locals[slot] = value;
        }

        /** Buffer {@code i} of a {@link Builder} (for steps). */
        public MemorySegment buffer(int i) {
            return buffers[i];
        }

        /** The per-workspace state of {@code slot} ({@link Builder#stateSlot()}), as its step's prepare set it. */
        public MemorySegment[] state(int slot) {
            return state[slot];
        }

        /** For a step's prepare. */
        public void state(int slot, MemorySegment[] value) {
            state[slot] = value;
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
            for (int i = 0; i < locals.length; i++) {
                if (locals[i] instanceof AutoCloseable c) {
                    try {
                        c.close();
                    } catch (Exception e) {
                        throw new IllegalStateException("closing an inference workspace: " + e.getMessage(), e);
                    }
                }
                locals[i] = null;
            }
            arena.close();
        }
    }

    public Workspace newWorkspace() {
        return new Workspace();
    }

    /**
     * Frees what the plan's steps share (packed weights); its workspaces must be closed first. A
     * plan of layers that own nothing needs no close (closing it is harmless).
     */
    public void close() {
        RuntimeException first = null;
        for (AutoCloseable c : owned) {
            try {
                c.close();
            } catch (Exception e) {
                if (first == null) first = new IllegalStateException("closing an inference plan: " + e.getMessage(), e);
            }
        }
        if (first != null) throw first;
    }
}
