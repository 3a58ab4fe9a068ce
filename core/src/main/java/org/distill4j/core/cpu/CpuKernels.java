package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.MemorySegment;
import org.distill4j.core.Activation;
import org.distill4j.core.Bf16;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.ConvGeometry;
import org.distill4j.core.PoolMode;
import org.distill4j.core.Pool2dParams;

/**
 * The CPU backend's forward kernels as plain loops over a range of rows, planes or elements of
 * float32 segments: no checks, no allocation, no threads. {@link CpuBackend} runs them in
 * parallel over ranges; the inference plan of {@code org.distill4j.core.infer.Predictor} runs
 * them on the calling thread, which is what makes its steady state allocation-free, with the
 * same arithmetic (so its results equal the backend's bit for bit).
 */
public final class CpuKernels {
    private CpuKernels() {}

    static float f(MemorySegment s, long i) {
        return s.getAtIndex(JAVA_FLOAT, i);
    }

    static void set(MemorySegment s, long i, float v) {
        s.setAtIndex(JAVA_FLOAT, i, v);
    }

    /**
     * bf16[i] = x[i] rounded to bfloat16, nearest even ({@link Bf16#fromFloat}), for i in [0, n):
     * the input side of a bf16 matrix product (x float32, bf16 raw bits, 2 bytes an element).
     */
    public static void toBf16(MemorySegment x, MemorySegment bf16, long n) {
        for (long i = 0; i < n; i++) bf16.setAtIndex(JAVA_SHORT, i, Bf16.fromFloat(f(x, i)));
    }

    /** y[r, j] += bias[j] for rows [from, to) of y [rows, features]. */
    public static void biasAddRows(MemorySegment y, MemorySegment bias, long from, long to, long features) {
        for (long n = from; n < to; n++) {
            long base = n * features;
            for (long j = 0; j < features; j++) set(y, base + j, f(y, base + j) + f(bias, j));
        }
    }

    /** y[plane] += bias[plane % channels] for planes [from, to) of y [N, channels, planeSize]. */
    public static void biasAddPlanes(MemorySegment y, MemorySegment bias, long from, long to, long channels, long planeSize) {
        for (long oc = from; oc < to; oc++) {
            float b = f(bias, oc % channels);
            long base = oc * planeSize;
            for (long i = 0; i < planeSize; i++) set(y, base + i, f(y, base + i) + b);
        }
    }

    /**
     * Whether ReLU forward and backward run in our native kernel library (vectorised, the same bits
     * as the Java loops): it loaded, unless -Ddistill4j.cpu.nativeRelu=false (A/B benchmarks).
     */
    static volatile boolean NATIVE_RELU = CpuFastDistillationLoss.available() && !"false".equals(System.getProperty("distill4j.cpu.nativeRelu"));

    /**
     * Whether {@link #activation} of this kind runs best as one call over a whole buffer: GELU on
     * the oneDNN engine ({@link OnednnEltwise}, which spreads it over its own threads).
     */
    static boolean activationRunsWhole(Activation kind) {
        return (kind == Activation.GELU || kind == Activation.GELU_TANH) && OnednnEltwise.enabled();
    }

    /** Whether the native ReLU kernels are in use (tests, reports). */
    static boolean nativeRelu() {
        return NATIVE_RELU;
    }

    /** Tests: run ReLU on the native kernels (when loaded) or the Java loops; returns what was in use. */
    static boolean useNativeRelu(boolean on) {
        boolean was = NATIVE_RELU;
        NATIVE_RELU = on && CpuFastDistillationLoss.available();
        return was;
    }

    /**
     * y[i] = activation(x[i]) for elements [from, to); ReLU in float (our native kernel when loaded),
     * GELU on oneDNN's eltwise primitive on that engine when the range starts at 0 (it takes a
     * buffer from its start; {@link #activationRunsWhole}), the others in double as
     * {@link CpuBackend#activate}.
     */
    public static void activation(Activation kind, float param, MemorySegment x, MemorySegment y, long from, long to) {
        if (from == 0 && activationRunsWhole(kind) && OnednnEltwise.geluForward(kind == Activation.GELU_TANH, x, y, to)) return;
        if (kind == Activation.RELU) {
            if (NATIVE_RELU) {
                org.distill4j.bindings.cpu.distill4j_cpu_h.d4j_cpu_relu_forward(x, y, from, to);
                return;
            }
            for (long i = from; i < to; i++) {
                float v = f(x, i);
                set(y, i, v > 0 ? v : 0f);
            }
            return;
        }
        for (long i = from; i < to; i++) set(y, i, (float) CpuBackend.activate(kind, param, f(x, i)));
    }

    /** Batch norm in eval mode for planes [from, to) of x [N, channels, planeSize]: (x - mean) / sqrt(var + eps) * gamma + beta. */
    public static void batchNormEval(MemorySegment x, MemorySegment y, MemorySegment gamma, MemorySegment beta, MemorySegment mean, MemorySegment var,
                                     float eps, long from, long to, long channels, long planeSize) {
        for (long nc = from; nc < to; nc++) {
            long c = nc % channels;
            double invStd = 1 / Math.sqrt(f(var, c) + eps), m = f(mean, c);
            double g = f(gamma, c), b = f(beta, c);
            for (long i = nc * planeSize; i < (nc + 1) * planeSize; i++) set(y, i, (float) ((f(x, i) - m) * invStd * g + b));
        }
    }

    /** Max or average pooling (padding counted, as count_include_pad=True) for planes [from, to) of x [planes, h, w] into y [planes, oh, ow]. */
    public static void pool2d(PoolMode mode, Pool2dParams p, MemorySegment x, MemorySegment y, long from, long to, long h, long w, long oh, long ow) {
        float divisor = p.kernelH() * p.kernelW();
        for (long plane = from; plane < to; plane++) {
            for (long i = 0; i < oh; i++) for (long j = 0; j < ow; j++) {
                double acc = mode == PoolMode.MAX ? Double.NEGATIVE_INFINITY : 0;
                for (int u = 0; u < p.kernelH(); u++) for (int v = 0; v < p.kernelW(); v++) {
                    long yy = i * p.strideH() - p.padH() + u, xx = j * p.strideW() - p.padW() + v;
                    if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                    float val = f(x, (plane * h + yy) * w + xx);
                    acc = mode == PoolMode.MAX ? (val > acc || Float.isNaN(val) ? val : acc) : acc + val;
                }
                set(y, (plane * oh + i) * ow + j, (float) (mode == PoolMode.MAX ? acc : acc / divisor));
            }
        }
    }

    /** out[r] = mean of row r of x [rows, cols] (double sum), for rows [from, to): global average pooling. */
    public static void meanRows(MemorySegment x, MemorySegment out, long from, long to, long cols) {
        for (long r = from; r < to; r++) {
            double acc = 0;
            for (long i = r * cols; i < (r + 1) * cols; i++) acc += f(x, i);
            set(out, r, (float) (acc / cols));
        }
    }

    /** out[i] = a[i] + b[i] for elements [from, to). */
    public static void add(MemorySegment a, MemorySegment b, MemorySegment out, long from, long to) {
        for (long i = from; i < to; i++) set(out, i, f(a, i) + f(b, i));
    }

    /** col [C*R*S, OH*OW] of image {@code img} (offset in elements into x). */
    public static void im2col(MemorySegment x, long img, ConvGeometry g, Conv2dParams p, MemorySegment col) {
        im2col(x, img, g, p, col, 0, g.c());
    }

    /**
     * The rows of input channels [c0, c1) of im2col: for each (channel, kernel row u, kernel column
     * v) and output row i, the valid output columns [jlo, jhi) are computed once, so the inner loop
     * is a plain copy (one bulk copy at stride 1) and only the padded edges are zeroed.
     */
    public static void im2col(MemorySegment x, long img, ConvGeometry g, Conv2dParams p, MemorySegment col, int c0, int c1) {
        int sw = p.strideW(), pw = p.padW(), ow = g.ow();
        for (int ci = c0; ci < c1; ci++) for (int u = 0; u < g.r(); u++) for (int v = 0; v < g.s(); v++) {
            long row = ((long) (ci * g.r() + u) * g.s() + v) * g.ohw();
            int first = pw - v; // j * sw >= pw - v
            int jlo = first <= 0 ? 0 : Math.min(ow, (first + sw - 1) / sw);
            int last = g.w() - 1 + pw - v; // j * sw <= w - 1 + pw - v
            int jhi = last < 0 ? 0 : Math.min(ow, last / sw + 1);
            if (jhi < jlo) jhi = jlo;
            for (int i = 0; i < g.oh(); i++) {
                int yy = i * p.strideH() - p.padH() + u;
                long dst = row + (long) i * ow;
                if (yy < 0 || yy >= g.h()) {
                    for (int j = 0; j < ow; j++) set(col, dst + j, 0f);
                    continue;
                }
                for (int j = 0; j < jlo; j++) set(col, dst + j, 0f);
                for (int j = jhi; j < ow; j++) set(col, dst + j, 0f);
                long src = img + ((long) ci * g.h() + yy) * g.w() + ((long) jlo * sw - pw + v);
                if (sw == 1) {
                    MemorySegment.copy(x, src * Float.BYTES, col, (dst + jlo) * Float.BYTES, (long) (jhi - jlo) * Float.BYTES);
                } else {
                    for (int j = jlo; j < jhi; j++) set(col, dst + j, f(x, src + (long) (j - jlo) * sw));
                }
            }
        }
    }
}
