package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.DType;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Pool2dParams;
import org.distill4j.core.PoolMode;
import org.distill4j.core.Reduction;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.cuda.DeviceOutOfMemoryException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The op suite on CUDA against the CPU oracle, on fresh random inputs. Tolerances: 1e-5 relative
 * for elementwise ops (float intrinsics differ from the CPU's double-accumulated reference by a few
 * ulps), TF32-sized ones where TF32 is on. Tagged "gpu"; skips cleanly without a GPU.
 */
@Tag("gpu")
class GpuBackendTest {
    private static CudaBackend gpu;
    private static final Backend cpu = CpuBackend.get();
    /** Fresh inputs every run, the seed printed; -Ddistill4j.test.seed=N replays one. */
    private final Random random = new Random(TestSeeds.seed(GpuBackendTest.class));
    private final List<Tensor> open = new ArrayList<>();

    @BeforeAll
    static void open() {
        gpu = Gpus.openOrSkip();
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
    }

    @AfterEach
    void free() {
        open.forEach(Tensor::close);
        open.clear();
    }

    /** The same random values on both backends: [cpu, gpu]. */
    private Tensor[] pair(long... shape) {
        float[] v = new float[(int) Tensor.numel(shape)];
        for (int i = 0; i < v.length; i++) v[i] = (float) random.nextGaussian();
        return pair(v, shape);
    }

    private Tensor[] pair(float[] v, long... shape) {
        Tensor c = cpu.fromArray(v, shape), g = gpu.fromArray(v, shape);
        open.add(c);
        open.add(g);
        return new Tensor[] {c, g};
    }

    private Tensor[] empty(DType dtype, long... shape) {
        Tensor c = cpu.zeros(dtype, shape), g = gpu.zeros(dtype, shape);
        open.add(c);
        open.add(g);
        return new Tensor[] {c, g};
    }

    private Tensor[] labels(long[] values) {
        Tensor[] t = empty(DType.I64, values.length);
        t[0].copyFrom(values);
        t[1].copyFrom(values);
        return t;
    }

    /** max |gpu - cpu| <= tol * max(1, max |cpu|). */
    private static void same(Tensor[] t, double tol, String what) {
        float[] c = t[0].toFloatArray(), g = t[1].toFloatArray();
        assertEquals(c.length, g.length);
        double scale = 1, worst = 0;
        for (float v : c) scale = Math.max(scale, Math.abs(v));
        for (int i = 0; i < c.length; i++) {
            if (Float.isNaN(c[i])) { assertTrue(Float.isNaN(g[i]), what + ": element " + i + " should be NaN"); continue; }
            worst = Math.max(worst, Math.abs(c[i] - g[i]));
        }
        assertTrue(worst <= tol * scale, what + ": max abs difference " + worst + " > " + tol * scale);
    }

    /**
     * gemmStridedBatched on fresh random layouts (every transpose pair, padded leading dimensions,
     * offsets, broadcast A or B, batches of 1 to 4): CUDA against the CPU oracle, F32 in both math
     * modes (cublasSgemm / cublasSgemmStridedBatched) and BF16 operands (cublasGemmEx /
     * cublasGemmStridedBatchedEx, fp32 accumulation: bf16 products are exact in fp32, so only the
     * summation order differs).
     */
    @Test
    void gemmStridedBatchedMatchesTheCpu() {
        for (int trial = 0; trial < 120; trial++) {
            boolean ta = random.nextBoolean(), tb = random.nextBoolean(), broadcastA = trial % 4 == 1, broadcastB = trial % 4 == 2;
            int m = 1 + random.nextInt(trial % 10 == 0 ? 200 : 40), n = 1 + random.nextInt(trial % 10 == 0 ? 200 : 40);
            int k = 1 + random.nextInt(trial % 10 == 0 ? 300 : 40), batch = 1 + random.nextInt(4);
            int lda = (ta ? m : k) + random.nextInt(3), ldb = (tb ? k : n) + random.nextInt(3), ldc = n + random.nextInt(3);
            long aMatrix = (long) (ta ? k : m) * lda, bMatrix = (long) (tb ? n : k) * ldb, cMatrix = (long) m * ldc;
            long strideA = broadcastA ? 0 : aMatrix + random.nextInt(4), strideB = broadcastB ? 0 : bMatrix + random.nextInt(4);
            long strideC = cMatrix + random.nextInt(4), offA = random.nextInt(5), offB = random.nextInt(5), offC = random.nextInt(5);
            DType dtype = trial % 3 == 0 ? DType.BF16 : DType.F32;
            CudaBackend.MathMode mode = trial % 2 == 0 ? CudaBackend.MathMode.STRICT_FP32 : CudaBackend.MathMode.TF32;
            gpu.setMathMode(mode);
            Tensor[] a = typed(dtype, offA + (batch - 1) * strideA + aMatrix), b = typed(dtype, offB + (batch - 1) * strideB + bMatrix);
            Tensor[] c = pair(offC + (batch - 1) * strideC + cMatrix);
            float alpha = 0.75f, beta = trial % 2 == 0 ? 0f : 0.5f;
            for (int side = 0; side < 2; side++) {
                (side == 0 ? cpu : gpu).gemmStridedBatched(ta, tb, m, n, k, alpha, a[side], offA, lda, strideA, b[side], offB, ldb, strideB, beta, c[side],
                    offC, ldc, strideC, batch);
            }
            double tol = (dtype == DType.F32 && mode == CudaBackend.MathMode.TF32 ? 2e-3 : 1e-5) * Math.sqrt(k);
            same(c, tol, "gemmStridedBatched trial " + trial + " " + dtype + " " + mode + " m " + m + " n " + n + " k " + k + " batch " + batch
                + " trans " + ta + tb + " broadcast " + broadcastA + broadcastB);
            free();
        }
        gpu.setMathMode(CudaBackend.MathMode.TF32);
    }

    /** addBroadcast (a copy and a biasAdd, no kernel of its own) on fresh inputs: CUDA against the CPU, out of place and in place. */
    @Test
    void addBroadcastMatchesTheCpu() {
        long[][][] cases = {{{4, 33, 64}, {33, 64}}, {{4, 33, 64}, {64}}, {{1000, 7}, {1000, 7}}};
        for (long[][] shapes : cases) {
            Tensor[] a = pair(shapes[0]), b = pair(shapes[1]), out = empty(DType.F32, shapes[0]);
            for (int side = 0; side < 2; side++) (side == 0 ? cpu : gpu).addBroadcast(a[side], b[side], out[side]);
            same(out, 0, "addBroadcast " + java.util.Arrays.toString(shapes[0]) + " + " + java.util.Arrays.toString(shapes[1]));
            for (int side = 0; side < 2; side++) (side == 0 ? cpu : gpu).addBroadcast(a[side], b[side], a[side]);
            same(a, 0, "addBroadcast in place");
            free();
        }
    }

    /** The same random values on both backends as F32 or BF16 (rounded once, identically). */
    private Tensor[] typed(DType dtype, long n) {
        float[] v = new float[(int) n];
        for (int i = 0; i < v.length; i++) v[i] = (float) random.nextGaussian();
        Tensor c = cpu.empty(dtype, n).copyFrom(v), g = gpu.empty(dtype, n).copyFrom(v);
        open.add(c);
        open.add(g);
        return new Tensor[] {c, g};
    }

    @Test
    void gemmAllTransposesBatchedStrictAndTf32() {
        int[][] shapes = {{1, 1, 1, 1}, {1, 7, 13, 5}, {3, 33, 17, 31}, {1, 256, 1200, 784}};
        for (CudaBackend.MathMode mode : CudaBackend.MathMode.values()) {
            gpu.setMathMode(mode);
            for (int[] s : shapes) for (boolean ta : new boolean[] {false, true}) for (boolean tb : new boolean[] {false, true}) {
                int b = s[0], m = s[1], n = s[2], k = s[3];
                Tensor[] a = pair(b, ta ? k : m, ta ? m : k), bb = pair(b, tb ? n : k, tb ? k : n), c = pair(b, m, n);
                cpu.gemm(ta, tb, 0.5f, a[0], bb[0], 2f, c[0]);
                gpu.gemm(ta, tb, 0.5f, a[1], bb[1], 2f, c[1]);
                same(c, (mode == CudaBackend.MathMode.TF32 ? 2e-3 : 1e-5) * Math.sqrt(k), "gemm " + mode + " " + java.util.Arrays.toString(s) + " " + ta + tb);
                free();
            }
        }
        gpu.setMathMode(CudaBackend.MathMode.TF32);
    }

    @Test
    void biasActivationsSoftmax() {
        for (long[] shape : new long[][] {{37, 61}, {4, 5, 6, 7}, {2, 9, 9}}) {
            Tensor[] y = pair(shape), b = pair(shape[shape.length - 1]), db = empty(DType.F32, shape[shape.length - 1]);
            cpu.biasAdd(y[0], b[0]);
            gpu.biasAdd(y[1], b[1]);
            same(y, 1e-5, "biasAdd");
            cpu.biasGrad(y[0], db[0], false);
            gpu.biasGrad(y[1], db[1], false);
            same(db, 1e-5, "biasGrad");
            Tensor[] cb = pair(shape[1]), dcb = empty(DType.F32, shape[1]);
            cpu.channelBiasAdd(y[0], cb[0]);
            gpu.channelBiasAdd(y[1], cb[1]);
            same(y, 1e-5, "channelBiasAdd");
            cpu.channelBiasGrad(y[0], dcb[0], false);
            gpu.channelBiasGrad(y[1], dcb[1], false);
            same(dcb, 1e-5, "channelBiasGrad");
        }
        for (Activation kind : Activation.values()) {
            Tensor[] x = pair(41, 67), y = empty(DType.F32, 41, 67), dy = pair(41, 67), dx = empty(DType.F32, 41, 67);
            for (int i = 0; i < 2; i++) {
                Backend be = i == 0 ? cpu : gpu;
                be.activation(kind, 0.07f, x[i], y[i]);
                be.activationBackward(kind, 0.07f, x[i], y[i], dy[i], dx[i]);
            }
            same(y, 1e-5, kind + " forward");
            same(dx, 1e-5, kind + " backward");
        }
        for (long[] shape : new long[][] {{1, 1}, {3, 7}, {64, 1000}, {2, 32769}}) {
            for (boolean log : new boolean[] {false, true}) {
                Tensor[] x = pair(shape), y = empty(DType.F32, shape), dy = pair(shape), dx = empty(DType.F32, shape);
                for (int i = 0; i < 2; i++) {
                    Backend be = i == 0 ? cpu : gpu;
                    if (log) { be.logSoftmax(x[i], y[i]); be.logSoftmaxBackward(y[i], dy[i], dx[i]); }
                    else { be.softmax(x[i], y[i]); be.softmaxBackward(y[i], dy[i], dx[i]); }
                }
                same(y, 1e-5, (log ? "logSoftmax " : "softmax ") + java.util.Arrays.toString(shape));
                same(dx, 1e-5, (log ? "logSoftmax" : "softmax") + " backward " + java.util.Arrays.toString(shape));
            }
        }
    }

    @Test
    void crossEntropyReductionsElementwiseClassification() {
        for (float eps : new float[] {0f, 0.1f}) for (int[] s : new int[][] {{1, 2}, {13, 10}, {256, 32000}}) {
            long[] y = new long[s[0]];
            for (int r = 0; r < y.length; r++) y[r] = r % 5 == 3 ? -100 : random.nextInt(s[1]);
            if (y.length == 1) y[0] = 1;
            Tensor[] x = pair(s[0], s[1]), lab = labels(y), loss = empty(DType.F32, 1), grad = empty(DType.F32, s[0], s[1]);
            cpu.crossEntropy(x[0], lab[0], -100, eps, loss[0], grad[0]);
            gpu.crossEntropy(x[1], lab[1], -100, eps, loss[1], grad[1]);
            same(loss, 1e-5, "crossEntropy loss");
            same(grad, 1e-5, "crossEntropy grad");
        }
        Tensor[] bad = pair(2, 3), badLabels = labels(new long[] {0, 7}), badLoss = empty(DType.F32, 1);
        gpu.crossEntropy(bad[1], badLabels[1], -100, 0, badLoss[1], null);
        assertTrue(Float.isNaN(badLoss[1].item()), "an out-of-range label gives NaN on the GPU");
        for (Reduction kind : Reduction.values()) {
            Tensor[] x = pair(23, 1029), rows = empty(DType.F32, 23), cols = empty(DType.F32, 1029);
            for (int i = 0; i < 2; i++) {
                Backend be = i == 0 ? cpu : gpu;
                be.reduceRows(kind, x[i], rows[i]);
                be.reduceCols(kind, x[i], cols[i]);
            }
            same(rows, 1e-5, "reduceRows " + kind);
            same(cols, 1e-5, "reduceCols " + kind);
        }
        Tensor[] a = pair(100_003), b = pair(100_003), out = empty(DType.F32, 100_003);
        for (int i = 0; i < 2; i++) {
            Backend be = i == 0 ? cpu : gpu;
            be.add(a[i], b[i], out[i]);
            be.mul(out[i], b[i], out[i]);
            be.axpy(1.5f, a[i], out[i]);
            be.scale(-0.25f, out[i]);
        }
        same(out, 1e-5, "add/mul/axpy/scale");
        Tensor[] logits = pair(500, 37), arg = empty(DType.I64, 500), count = empty(DType.I64, 1);
        long[] y = new long[500];
        for (int r = 0; r < 500; r++) y[r] = r % 7 == 0 ? -100 : random.nextInt(37);
        Tensor[] lab = labels(y);
        for (int i = 0; i < 2; i++) {
            Backend be = i == 0 ? cpu : gpu;
            be.argmax(logits[i], arg[i]);
            be.correctCount(logits[i], lab[i], -100, count[i]);
        }
        assertArrayEquals(arg[0].toLongArray(), arg[1].toLongArray());
        assertArrayEquals(count[0].toLongArray(), count[1].toLongArray());
    }

    @Test
    void dropoutAndUniformDrawTheSameNumbersAsTheCpu() {
        Tensor[] x = pair(1_000_001), y = empty(DType.F32, 1_000_001), u = empty(DType.F32, 1_000_001);
        for (int i = 0; i < 2; i++) {
            Backend be = i == 0 ? cpu : gpu;
            be.dropout(0.3f, 987654321L, 12345, x[i], y[i]);
            be.uniform(u[i], -2f, 3f, 42, 7);
        }
        assertArrayEquals(y[0].toFloatArray(), y[1].toFloatArray(), "dropout mask and scale");
        assertArrayEquals(u[0].toFloatArray(), u[1].toFloatArray(), "uniform");
    }

    @Test
    void convolutionPoolingBatchNorm() {
        int[][] cases = {{2, 3, 9, 11, 4, 3, 3, 1, 1}, {8, 16, 32, 32, 32, 3, 3, 1, 2}, {1, 1, 5, 5, 1, 1, 1, 0, 1}};
        for (CudaBackend.MathMode mode : CudaBackend.MathMode.values()) {
            gpu.setMathMode(mode);
            for (int[] q : cases) {
                Conv2dParams p = new Conv2dParams(q[7], q[7], q[8], q[8]);
                int oh = p.outH(q[2], q[5]), ow = p.outW(q[3], q[6]);
                Tensor[] x = pair(q[0], q[1], q[2], q[3]), w = pair(q[4], q[1], q[5], q[6]), y = empty(DType.F32, q[0], q[4], oh, ow);
                Tensor[] dy = pair(q[0], q[4], oh, ow), dx = empty(DType.F32, q[0], q[1], q[2], q[3]), dw = empty(DType.F32, q[4], q[1], q[5], q[6]);
                for (int i = 0; i < 2; i++) {
                    Backend be = i == 0 ? cpu : gpu;
                    be.conv2d(x[i], w[i], p, y[i]);
                    be.conv2dBackwardData(dy[i], w[i], p, dx[i]);
                    be.conv2dBackwardFilter(x[i], dy[i], p, dw[i], false);
                }
                double tol = (mode == CudaBackend.MathMode.TF32 ? 2e-3 : 1e-5);
                same(y, tol * Math.sqrt(q[1] * q[5] * q[6]), "conv2d " + mode);
                same(dx, tol * Math.sqrt(q[4] * q[5] * q[6]), "conv2dBackwardData " + mode);
                same(dw, tol * Math.sqrt(q[0] * oh * ow), "conv2dBackwardFilter " + mode);
                free();
            }
        }
        gpu.setMathMode(CudaBackend.MathMode.TF32);
        for (PoolMode mode : PoolMode.values()) for (Pool2dParams p : List.of(Pool2dParams.of(2, 2, 0), Pool2dParams.of(3, 2, 1))) {
            Tensor[] x = pair(2, 3, 7, 9), y = empty(DType.F32, 2, 3, p.outH(7), p.outW(9)), dy = pair(2, 3, p.outH(7), p.outW(9));
            Tensor[] dx = empty(DType.F32, 2, 3, 7, 9);
            for (int i = 0; i < 2; i++) {
                Backend be = i == 0 ? cpu : gpu;
                be.pool2d(mode, p, x[i], y[i]);
                be.pool2dBackward(mode, p, x[i], y[i], dy[i], dx[i]);
            }
            same(y, 1e-5, mode + " pool " + p);
            same(dx, 1e-5, mode + " pool backward " + p);
        }
        Tensor[] gx = pair(3, 4, 5, 7), gy = empty(DType.F32, 3, 4, 1, 1), gdy = pair(3, 4, 1, 1), gdx = empty(DType.F32, 3, 4, 5, 7);
        for (int i = 0; i < 2; i++) {
            Backend be = i == 0 ? cpu : gpu;
            be.globalAvgPool(gx[i], gy[i]);
            be.globalAvgPoolBackward(gdy[i], gdx[i]);
        }
        same(gy, 1e-5, "globalAvgPool");
        same(gdx, 1e-5, "globalAvgPoolBackward");
        for (long[] shape : new long[][] {{64, 5}, {8, 16, 10, 10}}) {
            long c = shape[1];
            Tensor[] x = pair(shape), gamma = pair(c), beta = pair(c), rm = pair(c), rv = pair(new float[(int) c], c), y = empty(DType.F32, shape);
            Tensor[] sm = empty(DType.F32, c), si = empty(DType.F32, c), dy = pair(shape), dx = empty(DType.F32, shape);
            Tensor[] dg = empty(DType.F32, c), dbt = empty(DType.F32, c), ye = empty(DType.F32, shape);
            for (int i = 0; i < 2; i++) {
                Backend be = i == 0 ? cpu : gpu;
                be.fill(rv[i], 1f);
                be.batchNormTrain(x[i], gamma[i], beta[i], rm[i], rv[i], 0.1f, 1e-5f, y[i], sm[i], si[i]);
                be.batchNormBackward(x[i], dy[i], gamma[i], sm[i], si[i], dx[i], dg[i], dbt[i]);
                be.batchNormEval(x[i], gamma[i], beta[i], rm[i], rv[i], 1e-5f, ye[i]);
            }
            same(y, 1e-5, "batchNormTrain y");
            same(rm, 1e-5, "running mean");
            same(rv, 1e-5, "running var");
            same(sm, 1e-5, "saved mean");
            same(si, 1e-4, "saved inverse std");
            same(dx, 1e-4, "batchNorm dx");
            same(dg, 1e-4, "batchNorm dgamma");
            same(dbt, 1e-5, "batchNorm dbeta");
            same(ye, 1e-5, "batchNormEval");
        }
    }

    @Test
    void optimizersAndNonFiniteCheck() {
        Tensor[] p = pair(10_007), g = pair(10_007), m = empty(DType.F32, 10_007), v = empty(DType.F32, 10_007), buf = empty(DType.F32, 10_007);
        for (int step = 1; step <= 3; step++) {
            for (int i = 0; i < 2; i++) {
                Backend be = i == 0 ? cpu : gpu;
                be.sgdStep(new Optimizers.Sgd(0.1f, 0.9f, 0f, true, 0.01f), step, List.of(p[i]), List.of(g[i]), List.of(buf[i]));
                be.adamwStep(Optimizers.AdamW.defaults(1e-3f), step, List.of(p[i]), List.of(g[i]), List.of(m[i]), List.of(v[i]));
            }
        }
        same(p, 1e-5, "sgd + adamw parameters");
        same(m, 1e-5, "adamw m");
        same(v, 1e-5, "adamw v");
        assertFalse(gpu.hasNonFinite(p[1], g[1]));
        gpu.scale(Float.NaN, g[1]);
        assertTrue(gpu.hasNonFinite(p[1], g[1]));
    }

    /** The optimizer variants that read lr and bias corrections from device memory (what a captured step uses). */
    @Test
    void optimizersWithDeviceScalars() {
        Tensor[] p = pair(4099), g = pair(4099), m = empty(DType.F32, 4099), v = empty(DType.F32, 4099), buf = empty(DType.F32, 4099), sc = empty(DType.F32, 4);
        Optimizers.Sgd sgd = new Optimizers.Sgd(0f, 0.9f, 0f, false, 0.01f);
        Optimizers.AdamW adam = new Optimizers.AdamW(0f, 0.9f, 0.999f, 1e-8f, 0.01f);
        for (int step = 1; step <= 3; step++) {
            float lr = 0.05f / step;
            for (int i = 0; i < 2; i++) {
                Backend be = i == 0 ? cpu : gpu;
                be.write(sc[i], new Optimizers.Sgd(lr, 0.9f, 0f, false, 0.01f).scalars(step));
                be.sgdStep(sgd, sc[i], List.of(p[i]), List.of(g[i]), List.of(buf[i]));
                be.write(sc[i], new Optimizers.AdamW(lr, 0.9f, 0.999f, 1e-8f, 0.01f).scalars(step));
                be.adamwStep(adam, sc[i], List.of(p[i]), List.of(g[i]), List.of(m[i]), List.of(v[i]));
            }
        }
        same(p, 1e-5, "parameters after scalar-driven sgd + adamw");
        same(v, 1e-5, "adamw v");
    }

    @Test
    void gatherRowsAndCounter() {
        long rows = 37, cols = 1003;
        Tensor[] table = pair(rows, cols);
        long[] idx = new long[64];
        for (int i = 0; i < idx.length; i++) idx[i] = random.nextInt((int) rows);
        Tensor[] index = labels(idx), out = empty(DType.F32, idx.length, cols);
        cpu.gatherRows(table[0], index[0], out[0]);
        gpu.gatherRows(table[1], index[1], out[1]);
        same(out, 0, "gatherRows f32");
        // bf16 table: the same bits on both sides (rounded on the host), widened exactly.
        float[] values = table[0].toFloatArray();
        short[] bits = new short[values.length];
        for (int i = 0; i < values.length; i++) bits[i] = (short) (Float.floatToRawIntBits(values[i]) >>> 16);
        Tensor[] bf = empty(DType.BF16, rows, cols);
        for (int i = 0; i < 2; i++) {
            try (java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
                (i == 0 ? cpu : gpu).copyFromHost(a.allocateFrom(java.lang.foreign.ValueLayout.JAVA_SHORT, bits), bf[i]);
            }
        }
        cpu.gatherRows(bf[0], index[0], out[0]);
        gpu.gatherRows(bf[1], index[1], out[1]);
        same(out, 0, "gatherRows bf16");
        idx[5] = rows; // out of range: NaN row on the GPU (no synchronisation), an exception on the CPU
        index[1].copyFrom(idx);
        gpu.gatherRows(table[1], index[1], out[1]);
        float[] got = out[1].toFloatArray();
        assertTrue(Float.isNaN(got[(int) (5 * cols)]) && Float.isNaN(got[(int) (6 * cols - 1)]), "bad index gives a NaN row");
        Tensor[] counter = empty(DType.I64);
        for (int k = 0; k < 3; k++) gpu.incrementCounter(counter[1]);
        assertEquals(3, counter[1].toLongArray()[0]);
    }

    @Test
    void badUseIsAClearExceptionNeverACrash() {
        DeviceOutOfMemoryException oom = assertThrows(DeviceOutOfMemoryException.class, () -> gpu.empty(DType.F32, 1L << 40));
        assertTrue(oom.getMessage().contains("asked for 4,398,046,511,104 bytes"), oom.getMessage());
        Tensor x = gpu.zeros(DType.F32, 4, 4), y = gpu.zeros(DType.F32, 4, 4);
        x.close();
        assertThrows(IllegalStateException.class, () -> gpu.activation(Activation.RELU, 0, x, y));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> gpu.add(y, y.view(16), y));
        assertTrue(e.getMessage().startsWith("add:"), e.getMessage());
        y.close();
    }

    /** Thousands of allocate/compute/free cycles: the pool's in-use bytes return to where they started. */
    @Test
    void noDeviceMemoryLeaksAcrossManyCycles() {
        gpu.synchronize();
        long before = gpu.poolBytesInUse();
        for (int i = 0; i < 3000; i++) {
            try (Tensor a = gpu.empty(DType.F32, 256, 1000); Tensor b = gpu.empty(DType.F32, 256, 1000); Tensor loss = gpu.empty(DType.F32, 1);
                 Tensor lab = gpu.zeros(DType.I64, 256)) {
                gpu.uniform(a, -1, 1, i, 0);
                gpu.softmax(a, b);
                gpu.crossEntropy(a, lab, -100, 0.1f, loss, b);
            }
        }
        gpu.synchronize();
        assertEquals(before, gpu.poolBytesInUse(), "pool bytes in use after 3000 cycles");
    }
}
