package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.distill4j.core.Activation;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.nn.Parameter;
import org.junit.jupiter.api.Test;

/**
 * Activations left in oneDNN's nChw16c between ops (CpuBackend.blockedActivations, Tensor.Layout):
 * a CNN's training step gives the same bits with them as without, the ops really leave them
 * blocked, and any code that reads a tensor through {@link Tensor#data()} sees row-major.
 */
class BlockedActivationsTest {
    private final CpuBackend cpu = CpuBackend.get();

    /** The kd-step student's shape (conv-BN-ReLU, a stride-2 residual block with a 1x1 shortcut, pooling), plus layers that read row-major. */
    private static final String SPEC = "{\"input\": [3, 12, 12], \"layers\": ["
        + "{\"type\": \"conv2d\", \"in\": 3, \"out\": 16, \"kernel\": 3, \"padding\": 1, \"bias\": false}, {\"type\": \"batchnorm2d\", \"features\": 16},"
        + "{\"type\": \"relu\"},"
        + "{\"type\": \"residual\", \"body\": ["
        + "  {\"type\": \"conv2d\", \"in\": 16, \"out\": 32, \"kernel\": 3, \"stride\": 2, \"padding\": 1, \"bias\": false},"
        + "  {\"type\": \"batchnorm2d\", \"features\": 32}, {\"type\": \"relu\"},"
        + "  {\"type\": \"conv2d\", \"in\": 32, \"out\": 32, \"kernel\": 3, \"padding\": 1}, {\"type\": \"batchnorm2d\", \"features\": 32}],"
        + " \"shortcut\": [{\"type\": \"conv2d\", \"in\": 16, \"out\": 32, \"kernel\": 1, \"stride\": 2, \"bias\": false},"
        + "  {\"type\": \"batchnorm2d\", \"features\": 32}]},"
        + "{\"type\": \"relu\"},"
        + "{\"type\": \"residual\", \"body\": [{\"type\": \"conv2d\", \"in\": 32, \"out\": 32, \"kernel\": 3, \"padding\": 1}, {\"type\": \"gelu\"}]},"
        + "{\"type\": \"maxpool2d\", \"kernel\": 2},"
        + "{\"type\": \"conv2d\", \"in\": 32, \"out\": 16, \"kernel\": 1}, {\"type\": \"tanh\"},"
        + "{\"type\": \"adaptiveavgpool2d\"}, {\"type\": \"flatten\"}, {\"type\": \"linear\", \"in\": 16, \"out\": 5}]}";

    /**
     * The same with 32 channels where SPEC has 16: every batch norm then runs on oneDNN with or
     * without blocked activations (at 16 channels the row-major path takes our loops, which sum in
     * double, and the blocked path oneDNN's kernel, which sums in float).
     */
    private static final String SPEC_32 = SPEC.replace("\"out\": 16, \"kernel\": 3", "\"out\": 32, \"kernel\": 3")
        .replace("{\"type\": \"batchnorm2d\", \"features\": 16}", "{\"type\": \"batchnorm2d\", \"features\": 32}")
        .replace("\"in\": 16, \"out\": 32", "\"in\": 32, \"out\": 32");

    /** Three training steps' outputs, input gradient and parameter gradients (and running statistics), with blocked activations on or off. */
    private List<float[]> trainingSteps(String spec, boolean blocked) {
        boolean was = CpuBackend.useBlockedActivations(blocked);
        List<float[]> out = new ArrayList<>();
        Random r = new Random(5);
        try (Model m = ModelSpec.parse("blocked.json", spec).build(cpu, 9)) {
            for (int step = 0; step < 3; step++) {
                float[] x = new float[4 * 3 * 12 * 12], w = new float[4 * 5];
                for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
                for (int i = 0; i < w.length; i++) w[i] = (float) r.nextGaussian();
                try (Arena arena = Arena.ofShared(); Tensor tx = cpu.fromArray(x, 4, 3, 12, 12); Tensor dy = cpu.fromArray(w, 4, 5)) {
                    Layer.Pass pass = new Layer.Pass(cpu, arena, true, 11, step);
                    m.zeroGrad();
                    out.add(m.forward(pass, tx).toFloatArray());
                    out.add(m.backward(pass, dy).toFloatArray());
                }
                for (Parameter p : m.parameters()) {
                    if (p.value().dtype() == DType.F32) out.add(p.trainable() ? p.grad().toFloatArray() : p.value().toFloatArray()); // running stats too
                }
                for (Parameter p : m.parameters()) { // a plain SGD step, so the next step runs on other weights
                    if (!p.trainable()) continue;
                    float[] v = p.value().toFloatArray(), g = p.grad().toFloatArray();
                    for (int i = 0; i < v.length; i++) v[i] -= 0.05f * g[i];
                    p.value().copyFrom(v);
                }
            }
        } finally {
            CpuBackend.useBlockedActivations(was);
        }
        return out;
    }

    @Test
    void trainingStepsGiveTheSameBitsWithAndWithoutBlockedActivations() {
        assumeTrue(CpuBackend.blockedActivations(), "convolutions are not on oneDNN here");
        assertTrue(SPEC_32.contains("\"features\": 32}") && !SPEC_32.contains("\"features\": 16"), SPEC_32);
        List<float[]> plain = trainingSteps(SPEC_32, false), blocked = trainingSteps(SPEC_32, true);
        assertEquals(plain.size(), blocked.size());
        for (int i = 0; i < plain.size(); i++) assertArrayEquals(plain.get(i), blocked.get(i), "result " + i + " of the three steps");
    }

    /**
     * With 16-channel batch norms (oneDNN's float sums against our double ones): within float32
     * rounding, relative to each result's scale (at least 1e-2: a convolution's bias before a batch
     * norm has a gradient of zero plus rounding, about 1e-8).
     */
    @Test
    void trainingStepsAgreeWithinFloatRoundingWithSixteenChannelBatchNorms() {
        assumeTrue(CpuBackend.blockedActivations(), "convolutions are not on oneDNN here");
        List<float[]> plain = trainingSteps(SPEC, false), blocked = trainingSteps(SPEC, true);
        assertEquals(plain.size(), blocked.size());
        for (int i = 0; i < plain.size(); i++) {
            float[] a = plain.get(i), b = blocked.get(i);
            double scale = 1e-2;
            for (float v : a) scale = Math.max(scale, Math.abs(v));
            for (int j = 0; j < a.length; j++) {
                assertEquals(a[j], b[j], 2e-4 * scale, "result " + i + " of the three steps, element " + j);
            }
        }
    }

    @Test
    void convolutionBatchNormActivationAndAddLeaveActivationsBlocked() {
        assumeTrue(CpuBackend.blockedActivations(), "convolutions are not on oneDNN here");
        try (Arena arena = Arena.ofShared(); Tensor x = cpu.fromArray(random(2 * 3 * 8 * 8, 1), 2, 3, 8, 8);
             Tensor w = cpu.fromArray(random(16 * 3 * 3 * 3, 2), 16, 3, 3, 3)) {
            Tensor y = cpu.empty(arena, DType.F32, 2, 16, 8, 8);
            cpu.conv2d(x, w, new org.distill4j.core.Conv2dParams(1, 1, 1, 1), y);
            assertEquals(Tensor.Layout.NCHW16C, y.layout(), "a convolution to 16 channels writes nChw16c");
            Tensor g = cpu.fromArray(new float[16], 16), b = cpu.fromArray(new float[16], 16), rm = cpu.fromArray(new float[16], 16);
            Tensor rv = cpu.fromArray(ones(16), 16), sm = cpu.empty(arena, DType.F32, 16), si = cpu.empty(arena, DType.F32, 16);
            cpu.fill(g, 1f);
            Tensor z = cpu.empty(arena, DType.F32, 2, 16, 8, 8), a = cpu.empty(arena, DType.F32, 2, 16, 8, 8), s = cpu.empty(arena, DType.F32, 2, 16, 8, 8);
            cpu.batchNormTrain(y, g, b, rm, rv, 0.1f, 1e-5f, z, sm, si);
            assertEquals(Tensor.Layout.NCHW16C, z.layout(), "batch norm of a blocked input writes nChw16c");
            cpu.activation(Activation.RELU, 0, z, a);
            assertEquals(Tensor.Layout.NCHW16C, a.layout(), "ReLU keeps the layout");
            cpu.add(a, y, s);
            assertEquals(Tensor.Layout.NCHW16C, s.layout(), "add of two blocked tensors stays blocked");
            for (Tensor t : List.of(g, b, rm, rv)) t.close();
        }
    }

    @Test
    void dataConvertsABlockedTensorBackToRowMajor() {
        assumeTrue(CpuBackend.blockedActivations(), "convolutions are not on oneDNN here");
        long n = 2, c = 32, h = 3, w = 5;
        float[] rowMajor = random((int) (n * c * h * w), 3), blocked = new float[rowMajor.length];
        for (long i = 0; i < n; i++) for (long k = 0; k < c; k++) for (long y = 0; y < h; y++) for (long x = 0; x < w; x++) {
            blocked[(int) (((i * (c / 16) + k / 16) * h * w + y * w + x) * 16 + k % 16)] = rowMajor[(int) (((i * c + k) * h + y) * w + x)];
        }
        try (Arena arena = Arena.ofShared(); Tensor plainOther = cpu.fromArray(random(rowMajor.length, 4), n, c, h, w)) {
            Tensor t = cpu.empty(arena, DType.F32, n, c, h, w);
            t.storage().copyFrom(java.lang.foreign.MemorySegment.ofArray(blocked));
            t.setLayout(Tensor.Layout.NCHW16C);
            Tensor sum = cpu.empty(arena, DType.F32, n, c, h, w);
            cpu.add(t, plainOther, sum); // mixed layouts: row-major throughout
            assertEquals(Tensor.Layout.ROW_MAJOR, t.layout(), "add of mixed layouts converts the blocked input");
            assertArrayEquals(rowMajor, t.toFloatArray(), "the reorder back to row-major");
            float[] o = plainOther.toFloatArray(), expected = new float[rowMajor.length];
            for (int i = 0; i < expected.length; i++) expected[i] = rowMajor[i] + o[i];
            assertArrayEquals(expected, sum.toFloatArray());
            // A view reads the same bytes as row-major: its base can no longer hold another layout.
            Tensor u = cpu.empty(arena, DType.F32, n, c, h, w);
            assertTrue(u.mayHoldLayout());
            u.view(n, c * h * w);
            assertFalse(u.mayHoldLayout());
            assertThrows(IllegalStateException.class, () -> u.setLayout(Tensor.Layout.NCHW16C));
            Tensor odd = cpu.empty(arena, DType.F32, n, 24, h, w);
            assertFalse(odd.mayHoldLayout(), "24 channels are not whole blocks of 16");
        }
    }

    private static float[] random(int n, long seed) {
        Random r = new Random(seed);
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) r.nextGaussian();
        return v;
    }

    private static float[] ones(int n) {
        float[] v = new float[n];
        java.util.Arrays.fill(v, 1f);
        return v;
    }
}
