package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.distill4j.core.Bf16;
import org.distill4j.core.Conv2dParams;
import org.distill4j.core.ConvGeometry;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/**
 * oneDNN's bf16 convolution (the bf16 inference plan's, issue 23) against the direct convolution
 * of the same bf16 x and w summed in float64, + b: odd sizes, strides 1 and 2, padding 0 to 2,
 * one image and several. Seeded: -Ddistill4j.test.seed=N replays a run.
 */
class OnednnConvBf16Test {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());

    @Test
    void matchesTheDirectConvolutionOfBf16Values() {
        Assumptions.assumeTrue(CpuBackend.onednnConvolutions(), "convolutions are not on oneDNN here");
        System.out.println("OnednnConvBf16Test seed " + seed);
        Random r = new Random(seed);
        int[][] cases = { // n, c, h, w, k, kernel, stride, padding
            {1, 3, 9, 9, 4, 3, 2, 1}, {5, 7, 11, 6, 9, 3, 1, 1}, {2, 16, 8, 8, 32, 1, 1, 0}, {3, 5, 13, 13, 6, 5, 2, 2}};
        for (int[] t : cases) {
            int n = t[0], c = t[1], h = t[2], w = t[3], k = t[4], ks = t[5], stride = t[6], pad = t[7];
            Conv2dParams p = Conv2dParams.of(pad, stride);
            int oh = p.outH(h, ks), ow = p.outW(w, ks);
            ConvGeometry g = new ConvGeometry(n, c, h, w, k, ks, ks, oh, ow);
            short[] x = new short[n * c * h * w], wt = new short[k * c * ks * ks];
            float[] b = new float[k];
            for (int i = 0; i < x.length; i++) x[i] = Bf16.fromFloat((float) r.nextGaussian());
            for (int i = 0; i < wt.length; i++) wt[i] = Bf16.fromFloat((float) r.nextGaussian());
            for (int i = 0; i < k; i++) b[i] = (float) r.nextGaussian();
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment xs = arena.allocateFrom(JAVA_SHORT, x), ws = arena.allocateFrom(JAVA_SHORT, wt), bs = arena.allocateFrom(JAVA_FLOAT, b);
                MemorySegment ys = arena.allocate((long) n * k * oh * ow * Float.BYTES, 64);
                assertTrue(CpuBackend.onednnConv2dBf16(xs, ws, bs, ys, g, p), "oneDNN declined a bf16 convolution " + java.util.Arrays.toString(t));
                float[] y = ys.toArray(JAVA_FLOAT);
                for (int img = 0; img < n; img++) for (int o = 0; o < k; o++) for (int yy = 0; yy < oh; yy++) for (int xx = 0; xx < ow; xx++) {
                    double s = b[o], mag = Math.abs(b[o]);
                    for (int ci = 0; ci < c; ci++) for (int u = 0; u < ks; u++) for (int v = 0; v < ks; v++) {
                        int iy = yy * stride + u - pad, ix = xx * stride + v - pad;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                        double term = (double) Bf16.toFloat(x[((img * c + ci) * h + iy) * w + ix]) * Bf16.toFloat(wt[((o * c + ci) * ks + u) * ks + v]);
                        s += term;
                        mag += Math.abs(term);
                    }
                    float got = y[((img * k + o) * oh + yy) * ow + xx];
                    assertTrue(Math.abs(got - s) <= 1e-5 * mag + 1e-6, "seed " + seed + ", " + java.util.Arrays.toString(t) + ": y[" + img + "," + o + "," + yy
                        + "," + xx + "] = " + got + ", float64 says " + s);
                }
            }
        }
        OnednnConv.implementations().stream().filter(s -> s.startsWith("[" + OnednnConv.FORWARD_BF16 + ",")).limit(4)
            .forEach(s -> System.out.println("OnednnConvBf16Test: " + s));
    }
}
