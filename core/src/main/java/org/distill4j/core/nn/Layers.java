package org.distill4j.core.nn;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Set;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.ConvGeometry;
import org.distill4j.core.DType;
import org.distill4j.core.Init;
import org.distill4j.core.Pool2dParams;
import org.distill4j.core.PoolMode;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.cpu.CpuKernels;
import org.distill4j.core.cpu.CpuMemory;
import org.distill4j.core.cpu.OnednnInferenceConv;
import org.distill4j.core.cpu.OnednnPackedMatmul;

/**
 * The built-in layers of a model spec (docs/model-spec.md), each mirroring its torch.nn
 * counterpart. Each class holds everything about its type: its {@link LayerKind} (the JSON keys and
 * how to build it, registered in {@link LayerRegistry#standard()}), its shapes, forward, backward
 * and its {@link InferencePlan} steps.
 */
public final class Layers {
    private Layers() {}

    private static IllegalArgumentException shapeError(String kind, String expected, long[] in) {
        return new IllegalArgumentException(kind + " expects " + expected + ", gets " + Arrays.toString(in));
    }

    /** torch.nn.Linear: y = x W^T + b, W [out, in]. */
    public static final class Linear extends Layer {
        public static final LayerKind KIND = LayerKind.of("linear", Set.of("in", "out", "bias"),
            a -> new Linear(a.backend(), a.positive("in"), a.positive("out"), a.bool("bias", true), a.seed()));

        private final long in, out;
        private final Parameter weight, bias;
        private Tensor x;

        public Linear(Backend b, long in, long out, boolean bias, long seed) {
            this.in = in;
            this.out = out;
            this.weight = new Parameter("weight", b.empty(DType.F32, out, in), true);
            this.bias = bias ? new Parameter("bias", b.empty(DType.F32, out), true) : null;
            Init.linearOrConv(weight.value(), bias ? this.bias.value() : null, in, seed);
        }

        @Override public String kind() { return "linear"; }

        @Override
        public long[] outputShape(long[] s) {
            if (s.length != 1 || s[0] != in) throw shapeError("linear", in + " inputs", s);
            return new long[] {out};
        }

        @Override
        public List<Parameter> parameters() {
            return bias == null ? List.of(weight) : List.of(weight, bias);
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Tensor y = p.backend().empty(p.arena(), DType.F32, x.size(0), out);
            p.backend().gemm(false, true, 1f, x, weight.value(), 0f, y);
            if (bias != null) p.backend().biasAdd(y, bias.value());
            this.x = p.train() ? x : null;
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            return backward(p, dy, true);
        }

        @Override
        public Tensor backward(Pass p, Tensor dy, boolean inputGrad) {
            if (x == null) throw noForward();
            Backend b = p.backend();
            b.gemm(true, false, 1f, dy, x, 1f, weight.grad());          // dW += dy^T x
            if (bias != null) b.biasGrad(dy, bias.grad(), true);           // db += sum dy
            if (!inputGrad) return null;
            Tensor dx = b.empty(p.arena(), DType.F32, x.shape());
            b.gemm(false, false, 1f, dy, weight.value(), 0f, dx);          // dx = dy W
            return dx;
        }

        /**
         * This layer and the ReLU after it as one step, y = ReLU(x W^T + b), where the plan packs
         * the weights (ReLU as the matmul's post-op: no second pass over y, which a frozen
         * teacher's plan ran on one thread); -1, having added nothing, where it does not.
         */
        int compileWithRelu(InferencePlan.Builder plan, int in) {
            int k = (int) this.in, n = (int) this.out;
            if (plan.bf16() || plan.blocked(in) || !OnednnPackedMatmul.pays(n, k, plan.maxBatch())) return -1;
            return compilePacked(plan, in, plan.buffer(this.out), true);
        }

        /** y = x W^T + b (then ReLU when {@code relu}) on weights packed once into oneDNN's layout, bias (and ReLU) fused; a snapshot (see InferencePlan). */
        private int compilePacked(InferencePlan.Builder plan, int in, int out, boolean relu) {
            MemorySegment w = weight.value().data(), b = bias == null ? null : bias.value().data();
            int k = (int) this.in, n = (int) this.out;
            return addPackedStep(plan, plan.own(new OnednnPackedMatmul(w, b, n, k, plan.maxBatch(), plan.weightsFixed(), false, relu)), in, out);
        }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            int out = plan.buffer(this.out);
            int k = (int) this.in, n = (int) this.out;
            MemorySegment w = weight.value().data(), b = bias == null ? null : bias.value().data();
            if (plan.bf16()) return compileBf16(plan, in, out, n, k, w, b);
            if (OnednnPackedMatmul.pays(n, k, plan.maxBatch())) return compilePacked(plan, in, out, false);
            if (OnednnPackedMatmul.enabled() && !plan.weightsFixed()) {
                // Too small to pack, but on this engine the plan's linear layers are all snapshots (see InferencePlan).
                w = plan.copyOf(w);
                if (b != null) b = plan.copyOf(b);
            }
            MemorySegment weights = w, biases = b;
            plan.add((ws, rows) -> {
                // y [rows, n] = x [rows, k] W^T, W [n, k]: the call CpuBackend.gemm(false, true, ...) makes.
                CpuBlas.sgemm(false, true, rows, n, k, 1f, ws.buffer(in), k, weights, k, 0f, ws.buffer(out), n);
                if (biases != null) CpuKernels.biasAddRows(ws.buffer(out), biases, 0, rows, n);
            });
            return out;
        }

        /** The step y [rows, n] = x [rows, k] W^T + b on packed weights, with an execution context per workspace; returns out. */
        private static int addPackedStep(InferencePlan.Builder plan, OnednnPackedMatmul packed, int in, int out) {
            int ctx = plan.localSlot();
            plan.add(new InferencePlan.Step() {
                @Override
                public void prepare(InferencePlan.Workspace ws, Arena arena) {
                    ws.local(ctx, packed.newContext());
                }

                @Override
                public void run(InferencePlan.Workspace ws, int rows) {
                    packed.run((OnednnPackedMatmul.Context) ws.local(ctx), ws.buffer(in), ws.buffer(out), rows);
                }
            });
            return out;
        }

        /**
         * The bf16 plan's step: y [rows, n] = bf16(x) [rows, k] bf16(W)^T [k, n] summed in float32,
         * + b in float32. On the oneDNN engine a bf16 packed matmul (every row count, bias fused);
         * elsewhere, or where oneDNN has no bf16 matmul, W rounded once into a bf16 copy, x rounded
         * per call into the workspace, and {@link CpuBlas#gemmBf16} (the Java loop off oneDNN).
         */
        private int compileBf16(InferencePlan.Builder plan, int in, int out, int n, int k, MemorySegment w, MemorySegment b) {
            if (OnednnPackedMatmul.enabled()) {
                OnednnPackedMatmul packed = null;
                try {
                    packed = plan.own(new OnednnPackedMatmul(w, b, n, k, plan.maxBatch(), plan.weightsFixed(), true));
                } catch (UnsupportedOperationException noBf16Matmul) {
                    // Falls through to gemmBf16 below (the same numerics).
                }
                if (packed != null) return addPackedStep(plan, packed, in, out);
            }
            MemorySegment weightsBf16 = plan.bf16CopyOf(w, (long) n * k); // W [n, k] bf16
            MemorySegment biases = b == null ? null : plan.copyOf(b.asSlice(0, (long) n * Float.BYTES));
            int slot = plan.stateSlot();
            int maxBatch = plan.maxBatch();
            plan.add(new InferencePlan.Step() {
                @Override
                public void prepare(InferencePlan.Workspace ws, Arena arena) {
                    ws.state(slot, new MemorySegment[] {CpuMemory.allocate(arena, (long) maxBatch * k * Short.BYTES, 64)}); // x [maxBatch, k] bf16
                }

                @Override
                public void run(InferencePlan.Workspace ws, int rows) {
                    MemorySegment xBf16 = ws.state(slot)[0];
                    CpuKernels.toBf16(ws.buffer(in), xBf16, (long) rows * k);
                    CpuBlas.gemmBf16(false, true, rows, n, k, xBf16, k, weightsBf16, k, 0f, ws.buffer(out), n);
                    if (biases != null) CpuKernels.biasAddRows(ws.buffer(out), biases, 0, rows, n);
                }
            });
            return out;
        }
    }

    /** torch.nn.Conv2d (no groups or dilation): weight [out, in, k, k]. */
    public static final class Conv2d extends Layer {
        public static final LayerKind KIND = LayerKind.of("conv2d", Set.of("in", "out", "kernel", "stride", "padding", "bias"),
            a -> new Conv2d(a.backend(), a.positive("in"), a.positive("out"), a.positive("kernel"), (int) a.positive("stride", 1),
                (int) a.nonNegative("padding", 0), a.bool("bias", true), a.seed()));

        private final long in, out, kernel;
        private final Conv2dParams geometry;
        private final Parameter weight, bias;
        private Tensor x;

        public Conv2d(Backend b, long in, long out, long kernel, int stride, int padding, boolean bias, long seed) {
            this.in = in;
            this.out = out;
            this.kernel = kernel;
            this.geometry = Conv2dParams.of(padding, stride);
            this.weight = new Parameter("weight", b.empty(DType.F32, out, in, kernel, kernel), true);
            this.bias = bias ? new Parameter("bias", b.empty(DType.F32, out), true) : null;
            Init.linearOrConv(weight.value(), bias ? this.bias.value() : null, in * kernel * kernel, seed);
        }

        @Override public String kind() { return "conv2d"; }

        @Override
        public long[] outputShape(long[] s) {
            if (s.length != 3 || s[0] != in) throw shapeError("conv2d", "[" + in + ", H, W]", s);
            long oh = geometry.outH(s[1], kernel), ow = geometry.outW(s[2], kernel);
            if (oh < 1 || ow < 1) throw shapeError("conv2d", "an input of at least the kernel size " + kernel + " after padding", s);
            return new long[] {out, oh, ow};
        }

        @Override
        public List<Parameter> parameters() {
            return bias == null ? List.of(weight) : List.of(weight, bias);
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Tensor y = p.backend().empty(p.arena(), DType.F32, withBatch(x.size(0), outputShape(withoutBatch(x))));
            p.backend().conv2d(x, weight.value(), bias == null ? null : bias.value(), geometry, y);
            this.x = p.train() ? x : null;
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            return backward(p, dy, true);
        }

        @Override
        public Tensor backward(Pass p, Tensor dy, boolean inputGrad) {
            if (x == null) throw noForward();
            Backend b = p.backend();
            b.conv2dBackwardFilter(x, dy, geometry, weight.grad(), bias == null ? null : bias.grad(), true);
            if (!inputGrad) return null;
            Tensor dx = like(p, x);
            b.conv2dBackwardData(dy, weight.value(), geometry, dx);
            return dx;
        }

        /** Reads a blocked input only where it fuses ({@link #compileFused}); otherwise converts it to NCHW first. */
        @Override
        public boolean compilesBlocked() { return true; }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            if (plan.fuses()) {
                int fused = compileFused(plan, s, in, null, -1, false);
                if (fused >= 0) return fused;
            }
            return compileUnfused(plan, s, next, plan.plain(in, s));
        }

        /**
         * The fused step on the oneDNN engine ({@link OnednnInferenceConv}): this convolution with
         * {@code bn} (an eval-mode BatchNorm2d right after it, or null) folded into its weights and
         * bias, plus buffer {@code addend} (a residual's shortcut, of the output's shape; -1: none)
         * and then ReLU when {@code relu}. The output is channel-blocked when it has a multiple of
         * 16 channels. Returns the output buffer, or -1 when it does not fuse (the addend is not
         * blocked like the output, or oneDNN has no such convolution): the caller compiles the
         * layers one by one.
         */
        int compileFused(InferencePlan.Builder plan, long[] s, int in, BatchNorm bn, int addend, boolean relu) {
            long[] next = outputShape(s);
            boolean dstBlocked = OnednnInferenceConv.blockable(next[0]);
            if (addend >= 0 && !(dstBlocked && plan.blocked(addend))) return -1;
            int k = (int) next[0], c = (int) s[0];
            long crs = (long) c * kernel * kernel;
            boolean bf16 = plan.bf16();
            MemorySegment w = weight.value().data(), b = bias == null ? null : bias.value().data();
            // float32: the batch norm folded into W and b. bf16: W rounded as the model has it, the batch norm as post-ops.
            float[][] folded = bn == null || bf16 ? null
                : OnednnInferenceConv.foldBatchNorm(w, b, k, crs, bn.weight.value().data(), bn.bias.value().data(), bn.runningMean.value().data(),
                    bn.runningVar.value().data(), bn.eps);
            OnednnInferenceConv conv;
            try (Arena tmp = Arena.ofConfined()) {
                MemorySegment wf = folded != null ? tmp.allocateFrom(java.lang.foreign.ValueLayout.JAVA_FLOAT, folded[0]) : w;
                MemorySegment bf = folded != null ? tmp.allocateFrom(java.lang.foreign.ValueLayout.JAVA_FLOAT, folded[1])
                    : b != null ? b : tmp.allocate((long) k * Float.BYTES); // no bias: zeros
                MemorySegment scale = null, shift = null;
                if (bf16 && bn != null) {
                    double[][] norm = OnednnInferenceConv.batchNormScaleShift(bn.weight.value().data(), bn.bias.value().data(),
                        bn.runningMean.value().data(), bn.runningVar.value().data(), bn.eps, k);
                    scale = tmp.allocate(java.lang.foreign.ValueLayout.JAVA_FLOAT, k);
                    shift = tmp.allocate(java.lang.foreign.ValueLayout.JAVA_FLOAT, k);
                    for (int o = 0; o < k; o++) {
                        scale.setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, o, (float) norm[0][o]);
                        shift.setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, o, (float) norm[1][o]);
                    }
                }
                conv = OnednnInferenceConv.create(c, (int) s[1], (int) s[2], k, (int) kernel, (int) kernel, (int) next[1], (int) next[2], geometry, wf, bf,
                    scale, shift, bf16, plan.blocked(in), dstBlocked, addend >= 0, relu, plan.maxBatch());
            }
            if (conv == null) return -1;
            plan.own(conv);
            int out = dstBlocked ? plan.blockedBuffer(Tensor.numel(next)) : plan.buffer(Tensor.numel(next));
            int source = bf16 ? plan.bf16Source(in, s) : -1; // bf16: x rounded once per buffer, in a state slot
            plan.add((ws, rows) -> conv.run(source >= 0 ? ws.state(source)[0] : ws.buffer(in), addend >= 0 ? ws.buffer(addend) : null, ws.buffer(out), rows));
            return out;
        }

        private int compileUnfused(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            int out = plan.buffer(Tensor.numel(next));
            int maxBatch = plan.maxBatch();
            ConvGeometry g = new ConvGeometry(maxBatch, (int) s[0], (int) s[1], (int) s[2], (int) next[0], (int) kernel, (int) kernel,
                (int) next[1], (int) next[2]);
            MemorySegment w = weight.value().data(), b = bias == null ? null : bias.value().data();
            int slot = plan.stateSlot();
            long imageIn = (long) g.c() * g.h() * g.w(), imageOut = (long) g.k() * g.ohw();
            if (plan.bf16()) return compileBf16(plan, in, out, g, w, b, slot, imageIn, imageOut);
            // The geometry of each batch size, made here so that a call allocates nothing.
            ConvGeometry[] byRows = new ConvGeometry[maxBatch + 1];
            for (int rows = 1; rows <= maxBatch; rows++) byRows[rows] = new ConvGeometry(rows, g.c(), g.h(), g.w(), g.k(), g.r(), g.s(), g.oh(), g.ow());
            plan.add(new InferencePlan.Step() {
                @Override
                public void prepare(InferencePlan.Workspace ws, Arena arena) {
                    MemorySegment[] state = new MemorySegment[maxBatch + 1];
                    state[0] = CpuMemory.allocate(arena, (long) g.crs() * g.ohw() * Float.BYTES, 64); // im2col of one image
                    for (int i = 0; i < maxBatch; i++) state[i + 1] = ws.buffer(out).asSlice(i * imageOut * Float.BYTES, imageOut * Float.BYTES);
                    ws.state(slot, state);
                }

                @Override
                public void run(InferencePlan.Workspace ws, int rows) {
                    // On the oneDNN engine, the backend's convolution primitive (bias fused): the same bits as Model.forward.
                    if (CpuBackend.onednnConv2d(ws.buffer(in), w, b, ws.buffer(out), byRows[rows], geometry)) return;
                    MemorySegment[] state = ws.state(slot);
                    for (int i = 0; i < rows; i++) {
                        CpuKernels.im2col(ws.buffer(in), i * imageIn, g, geometry, state[0]);
                        CpuBlas.sgemm(false, false, g.k(), g.ohw(), g.crs(), 1f, w, g.crs(), state[0], g.ohw(), 0f, state[i + 1], g.ohw());
                    }
                    if (b != null) CpuKernels.biasAddPlanes(ws.buffer(out), b, 0, (long) rows * g.k(), g.k(), g.ohw());
                }
            });
            return out;
        }

        /**
         * The bf16 plan's step: y [K, OH, OW] = conv(bf16(x), bf16(W)) summed in float32, + b in
         * float32. On the oneDNN engine, x [rows, C, H, W] rounded to bf16 into the workspace and
         * oneDNN's bf16 convolution (weights rounded once, when compiled). Elsewhere, or where oneDNN
         * has no bf16 convolution, per image: im2col of x into col [C R S, OH OW] (a copy with zero
         * padding, so rounding before or after it is the same), col rounded to bf16, then
         * y = bf16(W) [K, C R S] bf16(col) summed in float32 ({@link CpuBlas#gemmBf16}: oneDNN's bf16
         * matmul on the oneDNN engine, the Java loop elsewhere).
         */
        private int compileBf16(InferencePlan.Builder plan, int in, int out, ConvGeometry g, MemorySegment w, MemorySegment b, int slot,
                                long imageIn, long imageOut) {
            int maxBatch = plan.maxBatch();
            MemorySegment weightsBf16 = plan.bf16CopyOf(w, (long) g.k() * g.crs()); // W [K, C, R, S] bf16
            MemorySegment biases = b == null ? null : plan.copyOf(b.asSlice(0, (long) g.k() * Float.BYTES));
            long colElems = (long) g.crs() * g.ohw();
            ConvGeometry[] byRows = new ConvGeometry[maxBatch + 1];
            for (int rows = 1; rows <= maxBatch; rows++) byRows[rows] = new ConvGeometry(rows, g.c(), g.h(), g.w(), g.k(), g.r(), g.s(), g.oh(), g.ow());
            plan.add(new InferencePlan.Step() {
                @Override
                public void prepare(InferencePlan.Workspace ws, Arena arena) {
                    MemorySegment[] state = new MemorySegment[maxBatch + 3];
                    state[0] = CpuMemory.allocate(arena, colElems * Float.BYTES, 64);       // im2col of one image, float32
                    for (int i = 0; i < maxBatch; i++) state[i + 1] = ws.buffer(out).asSlice(i * imageOut * Float.BYTES, imageOut * Float.BYTES);
                    state[maxBatch + 1] = CpuMemory.allocate(arena, colElems * Short.BYTES, 64); // the same, bf16
                    state[maxBatch + 2] = CpuMemory.allocate(arena, maxBatch * imageIn * Short.BYTES, 64); // x [maxBatch, C, H, W] bf16
                    ws.state(slot, state);
                }

                @Override
                public void run(InferencePlan.Workspace ws, int rows) {
                    MemorySegment[] state = ws.state(slot);
                    if (CpuBackend.onednnConvolutions()) {
                        MemorySegment xBf16 = state[maxBatch + 2];
                        CpuKernels.toBf16(ws.buffer(in), xBf16, rows * imageIn);
                        if (CpuBackend.onednnConv2dBf16(xBf16, weightsBf16, biases, ws.buffer(out), byRows[rows], geometry)) return;
                    }
                    MemorySegment colBf16 = state[maxBatch + 1];
                    for (int i = 0; i < rows; i++) {
                        CpuKernels.im2col(ws.buffer(in), i * imageIn, g, geometry, state[0]);
                        CpuKernels.toBf16(state[0], colBf16, colElems);
                        CpuBlas.gemmBf16(false, false, g.k(), g.ohw(), g.crs(), weightsBf16, g.crs(), colBf16, g.ohw(), 0f, state[i + 1], g.ohw());
                    }
                    if (biases != null) CpuKernels.biasAddPlanes(ws.buffer(out), biases, 0, (long) rows * g.k(), g.k(), g.ohw());
                }
            });
            return out;
        }
    }

    /** torch.nn.BatchNorm1d ([N, C] or [N, C, L]) and BatchNorm2d ([N, C, H, W]). */
    public static final class BatchNorm extends Layer {
        public static final LayerKind KIND_1D = kind("batchnorm1d", false), KIND_2D = kind("batchnorm2d", true);

        private static LayerKind kind(String type, boolean twoD) {
            return LayerKind.of(type, Set.of("features", "eps", "momentum"),
                a -> new BatchNorm(a.backend(), a.positive("features"), (float) a.number("eps", 1e-5), (float) a.number("momentum", 0.1), twoD));
        }

        private final long features;
        private final float eps, momentum;
        private final boolean twoD;
        private final Parameter weight, bias, runningMean, runningVar, batches;
        private Tensor x, saveMean, saveInvStd;

        public BatchNorm(Backend b, long features, float eps, float momentum, boolean twoD) {
            this.features = features;
            this.eps = eps;
            this.momentum = momentum;
            this.twoD = twoD;
            this.weight = new Parameter("weight", b.empty(DType.F32, features), true);
            this.bias = new Parameter("bias", b.zeros(DType.F32, features), true);
            this.runningMean = new Parameter("running_mean", b.zeros(DType.F32, features), false);
            this.runningVar = new Parameter("running_var", b.empty(DType.F32, features), false);
            this.batches = new Parameter("num_batches_tracked", b.zeros(DType.I64), false);
            b.fill(weight.value(), 1f);
            b.fill(runningVar.value(), 1f);
        }

        @Override public String kind() { return twoD ? "batchnorm2d" : "batchnorm1d"; }

        @Override
        public long[] outputShape(long[] s) {
            boolean ok = twoD ? s.length == 3 && s[0] == features : (s.length == 1 || s.length == 2) && s[0] == features;
            if (!ok) throw shapeError(kind(), twoD ? "[" + features + ", H, W]" : "[" + features + "] or [" + features + ", L]", s);
            return s.clone();
        }

        @Override
        public List<Parameter> parameters() {
            return List.of(weight, bias, runningMean, runningVar, batches);
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Backend b = p.backend();
            Tensor y = like(p, x);
            if (p.train()) {
                saveMean = b.empty(p.arena(), DType.F32, features);
                saveInvStd = b.empty(p.arena(), DType.F32, features);
                b.batchNormTrain(x, weight.value(), bias.value(), runningMean.value(), runningVar.value(), momentum, eps, y, saveMean, saveInvStd);
                b.incrementCounter(batches.value()); // on the device: no host copy inside a step (graph capture)
                this.x = x;
            } else {
                b.batchNormEval(x, weight.value(), bias.value(), runningMean.value(), runningVar.value(), eps, y);
                this.x = null;
            }
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            if (x == null) throw noForward();
            Backend b = p.backend();
            Tensor dx = like(p, x);
            Tensor dg = b.empty(p.arena(), DType.F32, features), db = b.empty(p.arena(), DType.F32, features);
            b.batchNormBackward(x, dy, weight.value(), saveMean, saveInvStd, dx, dg, db);
            b.axpy(1f, dg, weight.grad());
            b.axpy(1f, db, bias.grad());
            return dx;
        }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            int out = plan.buffer(Tensor.numel(next));
            long channels = s[0], planeSize = s.length == 1 ? 1 : Tensor.numel(s) / s[0];
            MemorySegment gamma = weight.value().data(), beta = bias.value().data(), mean = runningMean.value().data(), var = runningVar.value().data();
            plan.add((ws, rows) -> CpuKernels.batchNormEval(ws.buffer(in), ws.buffer(out), gamma, beta, mean, var, eps, 0, rows * channels, channels,
                planeSize));
            return out;
        }
    }

    /** ReLU, LeakyReLU(slope), GELU (exact or tanh), Tanh, Sigmoid. */
    public static final class Act extends Layer {
        public static final LayerKind RELU = LayerKind.of("relu", Set.of(), a -> new Act(Activation.RELU, 0));
        public static final LayerKind LEAKY_RELU = LayerKind.of("leakyrelu", Set.of("slope"),
            a -> new Act(Activation.LEAKY_RELU, (float) a.number("slope", 0.01)));
        public static final LayerKind GELU = LayerKind.of("gelu", Set.of("approximate"), a -> {
            String approx = a.text("approximate", "none");
            if (!approx.equals("none") && !approx.equals("tanh")) throw a.error("\"approximate\" must be \"none\" or \"tanh\", got \"" + approx + "\"");
            return new Act(approx.equals("tanh") ? Activation.GELU_TANH : Activation.GELU, 0);
        });
        public static final LayerKind TANH = LayerKind.of("tanh", Set.of(), a -> new Act(Activation.TANH, 0));
        public static final LayerKind SIGMOID = LayerKind.of("sigmoid", Set.of(), a -> new Act(Activation.SIGMOID, 0));

        private final Activation activation;
        private final float param;
        private Tensor x, y;

        public Act(Activation activation, float param) {
            this.activation = activation;
            this.param = param;
        }

        @Override
        public String kind() {
            return switch (activation) {
                case RELU -> "relu";
                case LEAKY_RELU -> "leakyrelu";
                case GELU, GELU_TANH -> "gelu";
                case TANH -> "tanh";
                case SIGMOID -> "sigmoid";
            };
        }

        @Override public long[] outputShape(long[] s) { return s.clone(); }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Tensor y = like(p, x);
            p.backend().activation(activation, param, x, y);
            this.x = p.train() ? x : null;
            this.y = p.train() ? y : null;
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            if (x == null) throw noForward();
            Tensor dx = like(p, dy);
            p.backend().activationBackward(activation, param, x, y, dy, dx);
            return dx;
        }

        /** Elementwise: any layout, the output in the input's. */
        @Override
        public boolean compilesBlocked() { return true; }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            int out = plan.bufferLike(in, Tensor.numel(next));
            long features = Tensor.numel(s);
            plan.add((ws, rows) -> CpuKernels.activation(activation, param, ws.buffer(in), ws.buffer(out), 0, rows * features));
            return out;
        }

        boolean isRelu() {
            return activation == Activation.RELU;
        }
    }

    /** torch.nn.Dropout: identity in eval mode; in training the Philox mask of (seed, step, layer). */
    public static final class Dropout extends Layer {
        public static final LayerKind KIND = LayerKind.of("dropout", Set.of("p"), a -> {
            double p = a.number("p", 0.5);
            if (!(p >= 0 && p < 1)) throw a.error("\"p\" must be in [0, 1), got " + p);
            return new Dropout((float) p, a.position() + 1);
        });

        private final float probability;
        private final long salt;
        private long offset;
        private long seedUsed;
        private boolean trained;

        public Dropout(float p, long salt) {
            if (!(p >= 0 && p < 1)) throw new IllegalArgumentException("dropout p must be in [0, 1), got " + p);
            this.probability = p;
            this.salt = salt;
        }

        @Override public String kind() { return "dropout"; }

        public float probability() { return probability; }
        @Override public long[] outputShape(long[] s) { return s.clone(); }
        @Override public boolean hasDropout() { return probability > 0; }

        /** Identity in eval mode: the output is the input's buffer. */
        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            return in;
        }

        @Override
        public boolean compilesBlocked() { return true; }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            trained = p.train();
            if (!p.train() || probability == 0f) return x;
            Tensor y = like(p, x);
            seedUsed = p.seed() ^ (salt * 0x9E3779B97F4A7C15L);
            offset = p.step() * x.numel();
            p.backend().dropout(probability, seedUsed, offset, x, y);
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            if (!trained) throw noForward();
            if (probability == 0f) return dy;
            Tensor dx = like(p, dy);
            p.backend().dropoutBackward(probability, seedUsed, offset, dy, dx);
            return dx;
        }
    }

    /** MaxPool2d / AvgPool2d (count_include_pad=True, floor mode). */
    public static final class Pool extends Layer {
        public static final LayerKind MAX_KIND = kind("maxpool2d", PoolMode.MAX), AVG_KIND = kind("avgpool2d", PoolMode.AVG);

        private static LayerKind kind(String type, PoolMode mode) {
            return LayerKind.of(type, Set.of("kernel", "stride", "padding"), a -> {
                long k = a.positive("kernel");
                return new Pool(mode, (int) k, (int) a.positive("stride", k), (int) a.nonNegative("padding", 0));
            });
        }

        private final PoolMode mode;
        private final Pool2dParams geometry;
        private Tensor x, y;

        public Pool(PoolMode mode, int kernel, int stride, int padding) {
            this.mode = mode;
            this.geometry = Pool2dParams.of(kernel, stride, padding);
        }

        @Override public String kind() { return mode == PoolMode.MAX ? "maxpool2d" : "avgpool2d"; }

        @Override
        public long[] outputShape(long[] s) {
            if (s.length != 3) throw shapeError(kind(), "[C, H, W]", s);
            long oh = geometry.outH(s[1]), ow = geometry.outW(s[2]);
            if (oh < 1 || ow < 1) throw shapeError(kind(), "an input of at least the window " + geometry.kernelH() + " after padding", s);
            return new long[] {s[0], oh, ow};
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Tensor y = p.backend().empty(p.arena(), DType.F32, withBatch(x.size(0), outputShape(withoutBatch(x))));
            p.backend().pool2d(mode, geometry, x, y);
            this.x = p.train() ? x : null;
            this.y = p.train() ? y : null;
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            if (x == null) throw noForward();
            Tensor dx = like(p, x);
            p.backend().pool2dBackward(mode, geometry, x, y, dy, dx);
            return dx;
        }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            int out = plan.buffer(Tensor.numel(next));
            long channels = s[0], h = s[1], w = s[2], oh = next[1], ow = next[2];
            plan.add((ws, rows) -> {
                // On the oneDNN engine, the backend's pooling primitive: the same bits as Model.forward (average pooling sums in float there).
                if (CpuBackend.onednnPool2d(mode, geometry, ws.buffer(in), ws.buffer(out), rows, channels, h, w, oh, ow)) return;
                CpuKernels.pool2d(mode, geometry, ws.buffer(in), ws.buffer(out), 0, rows * channels, h, w, oh, ow);
            });
            return out;
        }
    }

    /** AdaptiveAvgPool2d(1): [C, H, W] to [C, 1, 1]. */
    public static final class GlobalAvgPool extends Layer {
        public static final LayerKind KIND = LayerKind.of("adaptiveavgpool2d", Set.of("output"), a -> {
            if (a.has("output") && a.value("output").asLong() != 1) throw a.error("only \"output\": 1 is supported");
            return new GlobalAvgPool();
        });

        public GlobalAvgPool() {}

        private long[] inShape;

        @Override public String kind() { return "adaptiveavgpool2d"; }

        @Override
        public long[] outputShape(long[] s) {
            if (s.length != 3) throw shapeError(kind(), "[C, H, W]", s);
            return new long[] {s[0], 1, 1};
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Tensor y = p.backend().empty(p.arena(), DType.F32, x.size(0), x.size(1), 1, 1);
            p.backend().globalAvgPool(x, y);
            inShape = x.shape();
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            if (inShape == null) throw noForward();
            Tensor dx = p.backend().empty(p.arena(), DType.F32, inShape);
            p.backend().globalAvgPoolBackward(dy, dx);
            return dx;
        }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            int out = plan.buffer(Tensor.numel(next));
            long channels = s[0], hw = s[1] * s[2];
            plan.add((ws, rows) -> CpuKernels.meanRows(ws.buffer(in), ws.buffer(out), 0, rows * channels, hw));
            return out;
        }
    }

    /** torch.nn.Flatten: [N, ...] to [N, prod(...)] (a view). */
    public static final class Flatten extends Layer {
        public static final LayerKind KIND = LayerKind.of("flatten", Set.of(), a -> new Flatten());

        public Flatten() {}

        private long[] inShape;

        @Override public String kind() { return "flatten"; }

        @Override
        public long[] outputShape(long[] s) {
            return new long[] {Tensor.numel(s)};
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            inShape = x.shape();
            return x.view(x.size(0), x.numel() / Math.max(1, x.size(0)));
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            return dy.view(inShape);
        }

        /** The same bytes, viewed as [N, prod]. */
        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            return in;
        }
    }

    public static final class Identity extends Layer {
        public static final LayerKind KIND = LayerKind.of("identity", Set.of(), a -> new Identity());

        public Identity() {}

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            return in;
        }

        @Override
        public boolean compilesBlocked() { return true; }

        @Override public String kind() { return "identity"; }
        @Override public long[] outputShape(long[] s) { return s.clone(); }
        @Override public Tensor forward(Pass p, Tensor x) { return x; }
        @Override public Tensor backward(Pass p, Tensor dy) { return dy; }
    }

    /** torch.nn.Sequential: children named "0", "1", ... */
    public static final class Sequential extends Layer {
        private final List<Layer> layers;

        public Sequential(List<Layer> layers) {
            this.layers = List.copyOf(layers);
        }

        public List<Layer> layers() { return layers; }

        @Override public List<Layer> children() { return layers; }

        @Override public String kind() { return "sequential"; }

        /** Its children convert a blocked input themselves (through {@link InferencePlan.Builder#compile}). */
        @Override
        public boolean compilesBlocked() { return true; }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] shape, long[] next, int in) {
            return compileThen(plan, shape, in, -1, false);
        }

        /**
         * The children's steps, then (when {@code addend} >= 0) + buffer {@code addend} and, with
         * {@code relu}, ReLU: a residual's body with its shortcut. Where the plan fuses convolutions,
         * a convolution takes the eval-mode BatchNorm2d and the ReLU right after it, and the
         * sequence's last convolution (with its batch norm, and no ReLU of its own) takes the add
         * and the ReLU; whatever does not fuse runs step by step.
         */
        int compileThen(InferencePlan.Builder plan, long[] shape, int in, int addend, boolean relu) {
            int current = in;
            long[] s = shape;
            boolean added = false;
            int n = layers.size();
            for (int i = 0; i < n; i++) {
                Layer layer = layers.get(i);
                long[] out = layer.outputShape(s);
                if (plan.fuses() && layer instanceof Conv2d conv) {
                    int j = i + 1; // the first layer after the group
                    BatchNorm bn = j < n && layers.get(j) instanceof BatchNorm b && b.twoD ? b : null;
                    if (bn != null) j++;
                    boolean ownRelu = j < n && layers.get(j) instanceof Act a && a.isRelu();
                    boolean takesAdd = addend >= 0 && !ownRelu && j == n; // the add comes after the batch norm, before the ReLU
                    int y = conv.compileFused(plan, s, current, bn, takesAdd ? addend : -1, ownRelu || (takesAdd && relu));
                    if (y < 0 && takesAdd) {
                        takesAdd = false; // the add does not fuse here (layouts): fuse the rest, add after
                        y = conv.compileFused(plan, s, current, bn, -1, false);
                    }
                    if (y >= 0) {
                        added |= takesAdd;
                        current = y;
                        s = out;
                        i = ownRelu ? j : j - 1;
                        continue;
                    }
                }
                if (plan.fuses() && layer instanceof Linear lin && i + 1 < n && layers.get(i + 1) instanceof Act a && a.isRelu()) {
                    int y = lin.compileWithRelu(plan, current);
                    if (y >= 0) {
                        current = y;
                        s = layers.get(i + 1).outputShape(out);
                        i++;
                        continue;
                    }
                }
                if (plan.fuses() && layer instanceof Residual res && i + 1 < n && layers.get(i + 1) instanceof Act a && a.isRelu()) {
                    current = res.compileThen(plan, s, current, true);
                    s = out;
                    i++;
                    continue;
                }
                current = plan.compile(layer, s, current);
                s = out;
            }
            if (addend >= 0 && !added) current = addThen(plan, s, current, addend, relu);
            return current;
        }

        /** y = x + addend (then ReLU), elementwise over buffers of one layout (both made NCHW when they differ). */
        private static int addThen(InferencePlan.Builder plan, long[] s, int x, int addend, boolean relu) {
            int a = x, b = addend;
            if (plan.blocked(a) != plan.blocked(b)) {
                a = plan.plain(a, s);
                b = plan.plain(b, s);
            }
            int xs = a, as = b;
            long features = Tensor.numel(s);
            int out = plan.bufferLike(xs, features);
            plan.add((ws, rows) -> {
                CpuKernels.add(ws.buffer(xs), ws.buffer(as), ws.buffer(out), 0, rows * features);
                if (relu) CpuKernels.activation(Activation.RELU, 0f, ws.buffer(out), ws.buffer(out), 0, rows * features);
            });
            return out;
        }

        @Override
        public long[] outputShape(long[] s) {
            long[] shape = s;
            for (int i = 0; i < layers.size(); i++) {
                try {
                    shape = layers.get(i).outputShape(shape);
                } catch (IllegalArgumentException e) {
                    throw new IllegalArgumentException("layer " + i + " (" + layers.get(i).kind() + "): " + e.getMessage(), e);
                }
            }
            return shape;
        }

        @Override
        public List<Parameter> parameters() {
            List<Parameter> out = new ArrayList<>();
            for (int i = 0; i < layers.size(); i++) for (Parameter p : layers.get(i).parameters()) out.add(p.renamed(i + "."));
            return out;
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Tensor h = x;
            for (Layer l : layers) h = l.forward(p, h);
            return h;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            Tensor g = dy;
            for (int i = layers.size() - 1; i >= 0; i--) g = layers.get(i).backward(p, g);
            return g;
        }

        @Override
        public void close() {
            for (Layer l : layers) l.close();
        }
    }

    /** output = body(x) + shortcut(x), shortcut = identity when absent; state_dict names body.* and shortcut.*. */
    public static final class Residual extends Layer {
        public static final LayerKind KIND = LayerKind.of("residual", Set.of("body", "shortcut"), Set.of("body", "shortcut"), a -> {
            Sequential body = a.layers("body");
            if (body == null || body.layers().isEmpty()) {
                if (body != null) body.close();
                throw a.error("\"body\" must be a non-empty array");
            }
            Sequential shortcut;
            try {
                shortcut = a.layers("shortcut");
            } catch (RuntimeException e) {
                body.close();
                throw e;
            }
            return new Residual(body, shortcut == null || shortcut.layers().isEmpty() ? null : shortcut);
        });

        private final Sequential body, shortcut;

        public Residual(Sequential body, Sequential shortcut) {
            this.body = body;
            this.shortcut = shortcut;
        }

        @Override public String kind() { return "residual"; }

        @Override
        public List<Layer> children() {
            return shortcut == null ? List.of(body) : List.of(body, shortcut);
        }

        @Override
        public boolean compilesBlocked() { return true; }

        @Override
        public int compileInference(InferencePlan.Builder plan, long[] s, long[] next, int in) {
            return compileThen(plan, s, in, false);
        }

        /** body(x) + shortcut(x), then ReLU when {@code relu}: the body's last convolution takes the add where the plan fuses. */
        int compileThen(InferencePlan.Builder plan, long[] s, int in, boolean relu) {
            int shortcutOut = shortcut == null ? in : plan.compile(shortcut, s, in);
            return body.compileThen(plan, s, in, shortcutOut, relu);
        }

        @Override
        public long[] outputShape(long[] s) {
            long[] b, sc;
            try {
                b = body.outputShape(s);
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException("body " + e.getMessage(), e);
            }
            try {
                sc = shortcut == null ? s : shortcut.outputShape(s);
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException("shortcut " + e.getMessage(), e);
            }
            if (!Arrays.equals(b, sc)) {
                throw new IllegalArgumentException("body gives " + Arrays.toString(b) + " but the shortcut gives " + Arrays.toString(sc) + "; they are added");
            }
            return b;
        }

        @Override
        public List<Parameter> parameters() {
            List<Parameter> out = new ArrayList<>();
            for (Parameter p : body.parameters()) out.add(p.renamed("body."));
            if (shortcut != null) for (Parameter p : shortcut.parameters()) out.add(p.renamed("shortcut."));
            return out;
        }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Tensor b = body.forward(p, x);
            Tensor s = shortcut == null ? x : shortcut.forward(p, x);
            Tensor y = like(p, b);
            p.backend().add(b, s, y);
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            Tensor db = body.backward(p, dy);
            Tensor ds = shortcut == null ? dy : shortcut.backward(p, dy);
            Tensor dx = like(p, db);
            p.backend().add(db, ds, dx);
            return dx;
        }

        @Override
        public void close() {
            body.close();
            if (shortcut != null) shortcut.close();
        }
    }
}
