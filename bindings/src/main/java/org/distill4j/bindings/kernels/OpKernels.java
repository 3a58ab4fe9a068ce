package org.distill4j.bindings.kernels;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.cuda.CudaException;
import org.distill4j.bindings.cuda.cuda_h;

/**
 * Typed launchers for native/src/main/cuda/ops.cu, one method per kernel, arguments in the
 * kernel's order. Buffers are device pointers (zero-length, arena-bound segments); counts are
 * elements. Two launch shapes: grid-stride over n elements, or one block per row.
 */
public final class OpKernels {
    public static final int BLOCK = 256;
    private final KernelModule module;
    private final int maxBlocks;
    private final MemorySegment biasAdd, biasGrad, activation, activationBackward, softmax, softmaxBackward, ceCount, ceRows, ceFinish,
        reduceRows, reduceCols, binary, argmax, correctCount, dropout, uniform, broadcastMeanGrad, sgd, adamw, nonFinite,
        fillNegInf, scatterTopK, teacherAccumulate, incrementI64, gatherRows;

    public OpKernels(KernelModule module, int multiprocessors) {
        this.module = module;
        this.maxBlocks = Math.max(1, multiprocessors) * 32;
        biasAdd = fn("d4j_bias_add");
        biasGrad = fn("d4j_bias_grad");
        activation = fn("d4j_activation");
        activationBackward = fn("d4j_activation_backward");
        softmax = fn("d4j_softmax");
        softmaxBackward = fn("d4j_softmax_backward");
        ceCount = fn("d4j_ce_count");
        ceRows = fn("d4j_ce_rows");
        ceFinish = fn("d4j_ce_finish");
        reduceRows = fn("d4j_reduce_rows");
        reduceCols = fn("d4j_reduce_cols");
        binary = fn("d4j_binary");
        argmax = fn("d4j_argmax");
        correctCount = fn("d4j_correct_count");
        dropout = fn("d4j_dropout");
        uniform = fn("d4j_uniform");
        broadcastMeanGrad = fn("d4j_broadcast_mean_grad");
        sgd = fn("d4j_sgd");
        adamw = fn("d4j_adamw");
        nonFinite = fn("d4j_nonfinite");
        fillNegInf = fn("d4j_fill_neg_inf");
        scatterTopK = fn("d4j_scatter_topk");
        teacherAccumulate = fn("d4j_teacher_accumulate");
        incrementI64 = fn("d4j_increment_i64");
        gatherRows = fn("d4j_gather_rows");
    }

    private MemorySegment fn(String name) {
        return module.function(name);
    }

    private interface Args { LaunchArgs fill(Arena a); }

    private void grid(MemorySegment fn, String name, long n, MemorySegment stream, Args args) {
        if (n <= 0) return;
        int blocks = (int) Math.min(maxBlocks, (n + BLOCK - 1) / BLOCK);
        launch(fn, name, blocks, stream, args);
    }

    private void rows(MemorySegment fn, String name, long rows, MemorySegment stream, Args args) {
        if (rows <= 0) return;
        if (rows > Integer.MAX_VALUE) throw new IllegalArgumentException(name + ": " + rows + " rows exceed one launch's grid");
        launch(fn, name, (int) rows, 0, stream, args);
    }

    private static void launch(MemorySegment fn, String name, int blocks, MemorySegment stream, Args args) {
        launch(fn, name, blocks, 0, stream, args);
    }

    private static void launch(MemorySegment fn, String name, int blocks, int sharedBytes, MemorySegment stream, Args args) {
        try (Arena a = Arena.ofConfined()) {
            LaunchArgs la = args.fill(a);
            CudaException.check(cuda_h.cuLaunchKernel(fn, blocks, 1, 1, BLOCK, 1, 1, sharedBytes, stream, la.segment(), MemorySegment.NULL),
                "cuLaunchKernel(" + name + ")");
        }
    }

    public void biasAdd(MemorySegment y, MemorySegment bias, long features, long inner, long n, MemorySegment s) {
        grid(biasAdd, "d4j_bias_add", n, s, a -> new LaunchArgs(a, 5).pointer(y).pointer(bias).i64(features).i64(inner).i64(n));
    }

    public void biasGrad(MemorySegment dy, MemorySegment dbias, long outer, long features, long inner, boolean accumulate, MemorySegment s) {
        rows(biasGrad, "d4j_bias_grad", features, s,
            a -> new LaunchArgs(a, 6).pointer(dy).pointer(dbias).i64(outer).i64(features).i64(inner).i32(accumulate ? 1 : 0));
    }

    public void activation(int kind, float slope, MemorySegment x, MemorySegment y, long n, MemorySegment s) {
        grid(activation, "d4j_activation", n, s, a -> new LaunchArgs(a, 5).i32(kind).f32(slope).pointer(x).pointer(y).i64(n));
    }

    public void activationBackward(int kind, float slope, MemorySegment x, MemorySegment y, MemorySegment dy, MemorySegment dx, long n,
                                   MemorySegment s) {
        grid(activationBackward, "d4j_activation_backward", n, s,
            a -> new LaunchArgs(a, 7).i32(kind).f32(slope).pointer(x).pointer(y).pointer(dy).pointer(dx).i64(n));
    }

    public void softmax(MemorySegment x, MemorySegment y, long rows, long cols, boolean log, MemorySegment s) {
        rows(softmax, "d4j_softmax", rows, s, a -> new LaunchArgs(a, 4).pointer(x).pointer(y).i64(cols).i32(log ? 1 : 0));
    }

    public void softmaxBackward(MemorySegment y, MemorySegment dy, MemorySegment dx, long rows, long cols, boolean log, MemorySegment s) {
        rows(softmaxBackward, "d4j_softmax_backward", rows, s,
            a -> new LaunchArgs(a, 5).pointer(y).pointer(dy).pointer(dx).i64(cols).i32(log ? 1 : 0));
    }

    /** counts: two zeroed int64 on the device. */
    public void ceCount(MemorySegment labels, long rows, long classes, long ignore, MemorySegment counts, MemorySegment s) {
        grid(ceCount, "d4j_ce_count", rows, s, a -> new LaunchArgs(a, 5).pointer(labels).i64(rows).i64(classes).i64(ignore).pointer(counts));
    }

    /** grad may be NULL (no gradient wanted). */
    public void ceRows(MemorySegment x, MemorySegment labels, long rows, long classes, long ignore, float eps, MemorySegment counts,
                       MemorySegment rowLoss, MemorySegment grad, MemorySegment s) {
        rows(ceRows, "d4j_ce_rows", rows, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 8).pointer(x).pointer(labels).i64(classes).i64(ignore).f32(eps).pointer(counts).pointer(rowLoss);
            return grad.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(grad);
        });
    }

    public void ceFinish(MemorySegment rowLoss, long rows, MemorySegment counts, MemorySegment loss, MemorySegment s) {
        rows(ceFinish, "d4j_ce_finish", 1, s, a -> new LaunchArgs(a, 4).pointer(rowLoss).i64(rows).pointer(counts).pointer(loss));
    }

    public void reduceRows(int kind, MemorySegment x, MemorySegment out, long rows, long cols, MemorySegment s) {
        rows(reduceRows, "d4j_reduce_rows", rows, s, a -> new LaunchArgs(a, 4).i32(kind).pointer(x).pointer(out).i64(cols));
    }

    public void reduceCols(int kind, MemorySegment x, MemorySegment out, long rows, long cols, MemorySegment s) {
        grid(reduceCols, "d4j_reduce_cols", cols, s, a -> new LaunchArgs(a, 5).i32(kind).pointer(x).pointer(out).i64(rows).i64(cols));
    }

    /** op 0: out = a + b; op 1: out = a * b. */
    public void binary(int op, MemorySegment a_, MemorySegment b, MemorySegment out, long n, MemorySegment s) {
        grid(binary, "d4j_binary", n, s, a -> new LaunchArgs(a, 5).i32(op).pointer(a_).pointer(b).pointer(out).i64(n));
    }

    public void argmax(MemorySegment x, MemorySegment out, long rows, long cols, MemorySegment s) {
        rows(argmax, "d4j_argmax", rows, s, a -> new LaunchArgs(a, 3).pointer(x).pointer(out).i64(cols));
    }

    public void correctCount(MemorySegment x, MemorySegment labels, long rows, long cols, long ignore, MemorySegment out, MemorySegment s) {
        rows(correctCount, "d4j_correct_count", rows, s, a -> new LaunchArgs(a, 5).pointer(x).pointer(labels).i64(cols).i64(ignore).pointer(out));
    }

    public void dropout(float p, long seed, long offset, MemorySegment x, MemorySegment y, long n, MemorySegment s) {
        grid(dropout, "d4j_dropout", n, s, a -> new LaunchArgs(a, 6).f32(p).i64(seed).i64(offset).pointer(x).pointer(y).i64(n));
    }

    public void uniform(float low, float high, long seed, long offset, MemorySegment x, long n, MemorySegment s) {
        grid(uniform, "d4j_uniform", n, s, a -> new LaunchArgs(a, 6).f32(low).f32(high).i64(seed).i64(offset).pointer(x).i64(n));
    }

    public void broadcastMeanGrad(MemorySegment dy, MemorySegment dx, long hw, long n, MemorySegment s) {
        grid(broadcastMeanGrad, "d4j_broadcast_mean_grad", n, s, a -> new LaunchArgs(a, 4).pointer(dy).pointer(dx).i64(hw).i64(n));
    }

    /**
     * buf may be NULL when momentum is 0. scalars (device float[2]: lr, first) may be NULL; when
     * given, it overrides lr and first (for CUDA-graph replay with a per-step learning rate).
     */
    public void sgd(MemorySegment p, MemorySegment g, MemorySegment buf, float lr, float momentum, float dampening, boolean nesterov,
                    float wd, boolean first, long n, MemorySegment scalars, MemorySegment s) {
        grid(sgd, "d4j_sgd", n, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 11).pointer(p).pointer(g);
            la = buf.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(buf);
            la = la.f32(lr).f32(momentum).f32(dampening).i32(nesterov ? 1 : 0).f32(wd).i32(first ? 1 : 0).i64(n);
            return scalars.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(scalars);
        });
    }

    /** scalars (device float[4]: lr, decay, bc1, bc2) may be NULL; when given it overrides those four. */
    public void adamw(MemorySegment p, MemorySegment g, MemorySegment m, MemorySegment v, float lr, float b1, float b2, float eps, float decay,
                      float bc1, float bc2, long n, MemorySegment scalars, MemorySegment s) {
        grid(adamw, "d4j_adamw", n, s, a -> {
            LaunchArgs la = new LaunchArgs(a, 13).pointer(p).pointer(g).pointer(m).pointer(v).f32(lr).f32(b1).f32(b2).f32(eps).f32(decay).f32(bc1)
                .f32(bc2).i64(n);
            return scalars.equals(MemorySegment.NULL) ? la.nullPointer() : la.pointer(scalars);
        });
    }

    /** counter[0] += 1 on the device (int64). */
    public void incrementI64(MemorySegment counter, MemorySegment s) {
        launch(incrementI64, "d4j_increment_i64", 1, s, a -> new LaunchArgs(a, 1).pointer(counter));
    }

    /** out[r, :] = table[idx[r], :] as float32 (table float32 or bfloat16); a bad index writes a row of NaN. */
    public void gatherRows(MemorySegment table, boolean bf16, MemorySegment idx, MemorySegment out, long rows, long cols, long tableRows, MemorySegment s) {
        grid(gatherRows, "d4j_gather_rows", rows * cols, s,
            a -> new LaunchArgs(a, 7).pointer(table).i32(bf16 ? 1 : 0).pointer(idx).pointer(out).i64(rows).i64(cols).i64(tableRows));
    }

    public void nonFinite(MemorySegment x, long n, MemorySegment flag, MemorySegment s) {
        grid(nonFinite, "d4j_nonfinite", n, s, a -> new LaunchArgs(a, 3).pointer(x).i64(n).pointer(flag));
    }

    public void scatterTopK(MemorySegment indices, MemorySegment values, MemorySegment dense, long rows, long k, long cols, MemorySegment flag,
                            MemorySegment stream) {
        grid(fillNegInf, "d4j_fill_neg_inf", rows * cols, stream, a -> new LaunchArgs(a, 2).pointer(dense).i64(rows * cols));
        grid(scatterTopK, "d4j_scatter_topk", rows * k, stream,
            a -> new LaunchArgs(a, 7).pointer(indices).pointer(values).pointer(dense).i64(k).i64(cols).i64(rows * k).pointer(flag));
    }

    /** One teacher into the log-space average (d4j_teacher_accumulate); {@code out} is written on the last one. */
    public void teacherAccumulate(MemorySegment t, MemorySegment acc, MemorySegment out, long rows, long cols, float temperature, boolean first,
                                  boolean last, int teachers, MemorySegment stream) {
        rows(teacherAccumulate, "d4j_teacher_accumulate", rows, stream,
            a -> new LaunchArgs(a, 8).pointer(t).pointer(acc).pointer(out).i64(cols).f32(temperature).i32(first ? 1 : 0).i32(last ? 1 : 0).i32(teachers));
    }
}
