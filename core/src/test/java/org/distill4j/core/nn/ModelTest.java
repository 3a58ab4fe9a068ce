package org.distill4j.core.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Npy;
import org.distill4j.core.io.Safetensors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Model specs, PyTorch interop through safetensors, and end-to-end gradients of a whole model. */
class ModelTest {
    private final Backend cpu = CpuBackend.get();
    @TempDir
    Path tmp;

    private static Path fixture(String name) throws Exception {
        return org.distill4j.core.TestFiles.resource("/fixtures/model/" + name);
    }

    private float[] predict(Model m, float[] input, long... shape) {
        try (Arena arena = Arena.ofShared(); Tensor x = cpu.fromArray(input, shape)) {
            return m.forward(new Layer.Pass(cpu, arena, false, 0, 0), x).toFloatArray();
        }
    }

    @Test
    void reproducesPyTorchEvalLogitsAndRoundTripsItsWeights() throws Exception {
        ModelSpec spec = ModelSpec.read(fixture("cnn.json"));
        Npy.Array input = Npy.read(fixture("input.npy")), logits = Npy.read(fixture("logits.npy"));
        try (Model m = spec.build(cpu, 1)) {
            assertArrayEquals(new long[] {5}, m.outputShape());
            m.load(fixture("cnn.safetensors"));
            float[] expected = logits.toFloats(), got = predict(m, input.toFloats(), input.shape());
            for (int i = 0; i < got.length; i++) assertEquals(expected[i], got[i], 1e-4 * Math.max(1, Math.abs(expected[i])), "logit " + i);
            // PyTorch's parameter count: every trainable tensor in the state_dict.
            long count = 0;
            try (Safetensors st = Safetensors.open(fixture("cnn.safetensors"))) {
                for (var e : st.entries().values()) {
                    if (e.name().contains("running_") || e.name().endsWith("num_batches_tracked")) continue;
                    count += Arrays.stream(e.shape()).reduce(1, (a, b) -> a * b);
                }
            }
            assertEquals(count, m.parameterCount());
            // Save, and the file holds exactly what PyTorch wrote (names, dtypes, shapes, bytes).
            Path saved = tmp.resolve("saved.safetensors");
            m.save(saved);
            try (Safetensors a = Safetensors.open(fixture("cnn.safetensors")); Safetensors b = Safetensors.open(saved)) {
                assertEquals(a.entries().keySet(), b.entries().keySet());
                for (String name : a.entries().keySet()) {
                    var ea = a.entries().get(name);
                    var eb = b.entries().get(name);
                    assertEquals(ea.dtype(), eb.dtype(), name);
                    assertArrayEquals(ea.shape(), eb.shape(), name);
                    assertEquals(-1, a.bytes(ea).mismatch(b.bytes(eb)), name + " bytes");
                }
            }
            try (Model again = spec.build(cpu, 99)) {
                again.load(saved);
                assertArrayEquals(got, predict(again, input.toFloats(), input.shape()));
            }
        }
    }

    @Test
    void weightsThatDoNotMatchTheSpecAreListed() throws Exception {
        String text = Files.readString(fixture("cnn.json")).replace("{\"type\": \"linear\", \"in\": 10, \"out\": 5, \"bias\": true}",
            "{\"type\": \"linear\", \"in\": 10, \"out\": 6}, {\"type\": \"batchnorm1d\", \"features\": 6}");
        try (Model m = ModelSpec.parse("other.json", text).build(cpu, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> m.load(fixture("cnn.safetensors")));
            assertTrue(e.getMessage().contains("17.weight is F32[5, 10], the spec needs F32[6, 10]"), e.getMessage());
            assertTrue(e.getMessage().contains("missing 18.running_mean"), e.getMessage());
        }
    }

    @Test
    void specErrorsNameTheLayerAndTheNumbers() {
        IllegalArgumentException chain = assertThrows(IllegalArgumentException.class, () -> ModelSpec.parse("m.json",
            "{\"input\": [1, 28, 28], \"layers\": [{\"type\": \"conv2d\", \"in\": 1, \"out\": 16, \"kernel\": 3, \"padding\": 1},"
                + "{\"type\": \"maxpool2d\", \"kernel\": 2}, {\"type\": \"flatten\"}, {\"type\": \"linear\", \"in\": 3000, \"out\": 10}]}").build(cpu, 0));
        assertEquals("m.json: layer 3 (linear): linear expects 3000 inputs, gets [3136]", chain.getMessage());
        IllegalArgumentException type = assertThrows(IllegalArgumentException.class,
            () -> ModelSpec.parse("m.json", "{\"input\": [4], \"layers\": [{\"type\": \"dense\", \"in\": 4}]}"));
        assertTrue(type.getMessage().contains("unknown layer type \"dense\""), type.getMessage());
        IllegalArgumentException key = assertThrows(IllegalArgumentException.class,
            () -> ModelSpec.parse("m.json", "{\"input\": [4], \"layers\": [{\"type\": \"linear\", \"in\": 4, \"out\": 2, \"bais\": false}]}"));
        assertTrue(key.getMessage().contains("unknown key \"bais\""), key.getMessage());
        IllegalArgumentException json = assertThrows(IllegalArgumentException.class, () -> ModelSpec.parse("m.json", "{\"input\": [4], "));
        assertTrue(json.getMessage().startsWith("m.json: malformed JSON"), json.getMessage());
        IllegalArgumentException residual = assertThrows(IllegalArgumentException.class, () -> ModelSpec.parse("m.json",
            "{\"input\": [4], \"layers\": [{\"type\": \"residual\", \"body\": [{\"type\": \"linear\", \"in\": 4, \"out\": 3}]}]}").build(cpu, 0));
        assertTrue(residual.getMessage().contains("body gives [3] but the shortcut gives [4]"), residual.getMessage());
    }

    /** d(sum w * model(x))/d(theta) and /dx against central differences, in training mode (batch statistics, a fixed dropout mask). */
    @Test
    void wholeModelGradientsMatchFiniteDifferences() {
        String text = "{\"input\": [2, 6, 6], \"layers\": ["
            + "{\"type\": \"conv2d\", \"in\": 2, \"out\": 3, \"kernel\": 3, \"padding\": 1}, {\"type\": \"batchnorm2d\", \"features\": 3},"
            + "{\"type\": \"residual\", \"body\": [{\"type\": \"conv2d\", \"in\": 3, \"out\": 3, \"kernel\": 3, \"padding\": 1}, {\"type\": \"tanh\"}]},"
            + "{\"type\": \"avgpool2d\", \"kernel\": 2}, {\"type\": \"flatten\"}, {\"type\": \"dropout\", \"p\": 0.25},"
            + "{\"type\": \"linear\", \"in\": 27, \"out\": 5}, {\"type\": \"gelu\"}, {\"type\": \"linear\", \"in\": 5, \"out\": 3}]}";
        Random r = new Random(7);
        float[] x = new float[4 * 2 * 6 * 6], w = new float[4 * 3];
        for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
        for (int i = 0; i < w.length; i++) w[i] = (float) r.nextGaussian();
        try (Model m = ModelSpec.parse("g.json", text).build(cpu, 3)) {
            float[] dx;
            try (Arena arena = Arena.ofShared(); Tensor tx = cpu.fromArray(x, 4, 2, 6, 6); Tensor dy = cpu.fromArray(w, 4, 3)) {
                Layer.Pass pass = new Layer.Pass(cpu, arena, true, 11, 0);
                m.zeroGrad();
                m.forward(pass, tx);
                dx = m.backward(pass, dy).toFloatArray();
            }
            checkNumeric(m, x, w, x, dx, "input");
            for (Parameter p : m.parameters()) {
                if (!p.trainable()) continue;
                float[] value = p.value().toFloatArray(), grad = p.grad().toFloatArray();
                float[] probe = value.clone();
                double max = 1e-3;
                for (float g : grad) max = Math.max(max, Math.abs(g));
                for (int i = 0; i < probe.length; i += Math.max(1, probe.length / 6)) {
                    float saved = probe[i];
                    probe[i] = saved + 1e-2f;
                    p.value().copyFrom(probe);
                    double up = loss(m, x, w);
                    probe[i] = saved - 1e-2f;
                    p.value().copyFrom(probe);
                    double down = loss(m, x, w);
                    probe[i] = saved;
                    p.value().copyFrom(probe);
                    double numeric = (up - down) / 2e-2;
                    assertEquals(numeric, grad[i], 2e-2 * max, p.name() + "[" + i + "]");
                }
            }
        }
    }

    private void checkNumeric(Model m, float[] x, float[] w, float[] probe, float[] analytic, String what) {
        double max = 1e-3;
        for (float g : analytic) max = Math.max(max, Math.abs(g));
        for (int i = 0; i < probe.length; i += 7) {
            float saved = probe[i];
            probe[i] = saved + 1e-2f;
            double up = loss(m, x, w);
            probe[i] = saved - 1e-2f;
            double down = loss(m, x, w);
            probe[i] = saved;
            assertEquals((up - down) / 2e-2, analytic[i], 2e-2 * max, what + "[" + i + "]");
        }
    }

    private double loss(Model m, float[] x, float[] w) {
        try (Arena arena = Arena.ofShared(); Tensor tx = cpu.fromArray(x, 4, 2, 6, 6)) {
            float[] y = m.forward(new Layer.Pass(cpu, arena, true, 11, 0), tx).toFloatArray();
            double s = 0;
            for (int i = 0; i < y.length; i++) s += (double) y[i] * w[i];
            return s;
        }
    }

    @Test
    void unknownDtypesAndLyingHeadersAreRejected() throws Exception {
        byte[] good = Files.readAllBytes(fixture("cnn.safetensors"));
        String text = new String(good, java.nio.charset.StandardCharsets.ISO_8859_1);
        check("dtype.safetensors", text.replaceFirst("\"F32\"", "\"F99\"").getBytes(java.nio.charset.StandardCharsets.ISO_8859_1), "unknown dtype");
        check("short.safetensors", Arrays.copyOf(good, good.length - 8), "outside the data section");
        byte[] huge = good.clone();
        huge[7] = 0x7f;
        check("huge.safetensors", huge, "header length");
        check("tiny.safetensors", new byte[] {1, 2, 3}, "too short");
        check("json.safetensors", withHeader("{\"a\": "), "not valid JSON");
        check("overlap.safetensors", withHeader("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            + "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "overlaps");
        check("outside.safetensors", withHeader("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4), "outside the data section");
        check("size.safetensors", withHeader("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4), "needs 8 bytes");
    }

    private static byte[] withHeader(String json) {
        return withHeader(json, 0);
    }

    private static byte[] withHeader(String json, int dataBytes) {
        byte[] h = json.getBytes(java.nio.charset.StandardCharsets.UTF_8);
        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(8 + h.length + dataBytes).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h);
        return b.array();
    }

    private void check(String name, byte[] content, String expected) throws Exception {
        Path f = tmp.resolve(name);
        Files.write(f, content);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Safetensors.open(f).close());
        assertTrue(e.getMessage().startsWith(f.toString()) && e.getMessage().contains(expected), e.getMessage());
    }

    @Test
    void batchNormTracksBatchesLikePyTorch() throws Exception {
        try (Model m = ModelSpec.read(fixture("cnn.json")).build(cpu, 1); Arena arena = Arena.ofShared();
             Tensor x = cpu.fromArray(Npy.read(fixture("input.npy")).toFloats(), 4, 3, 12, 12)) {
            m.load(fixture("cnn.safetensors"));
            m.forward(new Layer.Pass(cpu, arena, true, 1, 0), x);
            Parameter tracked = m.parameters().stream().filter(p -> p.name().equals("1.num_batches_tracked")).findFirst().orElseThrow();
            assertEquals(DType.I64, tracked.value().dtype());
            assertEquals(8, tracked.value().toLongArray()[0], "7 in the file, plus one training step");
        }
    }
}
