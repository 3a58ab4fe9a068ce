package org.distill4j.core.userlayer;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.util.List;
import java.util.Random;
import java.util.Set;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Init;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.infer.Predictor;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.LayerKind;
import org.distill4j.core.nn.LayerRegistry;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.nn.Parameter;
import org.distill4j.core.train.Trainer;
import org.distill4j.core.train.TrainingConfig;
import org.junit.jupiter.api.Test;

/**
 * A layer type defined outside org.distill4j.core.nn, with parameters of its own, joins a model
 * spec through a LayerRegistry: it builds, trains, serves, and its gradients match finite
 * differences. This is the whole cost of a new layer type: one class and one LayerKind.
 */
class UserLayerTest {
    /**
     * A low-rank linear map without bias, y = (x D^T) U^T with D [rank, in] and U [out, rank]: as
     * PyTorch's {@code nn.Sequential(nn.Linear(in, rank, bias=False), nn.Linear(rank, out, bias=False))}
     * held under the names down and up.
     */
    static final class LowRank extends Layer {
        static final LayerKind KIND = LayerKind.of("lowrank", Set.of("in", "rank", "out"),
            a -> new LowRank(a.backend(), a.positive("in"), a.positive("rank"), a.positive("out"), a.seed()));

        private final long in, rank, out;
        private final Parameter down, up;
        private Tensor x, h; // training-mode forward: the input [N, in] and x D^T [N, rank]

        LowRank(Backend b, long in, long rank, long out, long seed) {
            this.in = in;
            this.rank = rank;
            this.out = out;
            this.down = new Parameter("down.weight", b.empty(DType.F32, rank, in), true);
            this.up = new Parameter("up.weight", b.empty(DType.F32, out, rank), true);
            Init.linearOrConv(down.value(), null, in, seed);
            Init.linearOrConv(up.value(), null, rank, seed + 1);
        }

        @Override public String kind() { return "lowrank"; }

        @Override
        public long[] outputShape(long[] s) {
            if (s.length != 1 || s[0] != in) throw new IllegalArgumentException("lowrank expects " + in + " inputs, gets " + java.util.Arrays.toString(s));
            return new long[] {out};
        }

        @Override public List<Parameter> parameters() { return List.of(down, up); }

        @Override
        public Tensor forward(Pass p, Tensor x) {
            Backend b = p.backend();
            Tensor h = b.empty(p.arena(), DType.F32, x.size(0), rank), y = b.empty(p.arena(), DType.F32, x.size(0), out);
            b.gemm(false, true, 1f, x, down.value(), 0f, h); // h [N, rank] = x D^T
            b.gemm(false, true, 1f, h, up.value(), 0f, y);   // y [N, out] = h U^T
            this.x = p.train() ? x : null;
            this.h = p.train() ? h : null;
            return y;
        }

        @Override
        public Tensor backward(Pass p, Tensor dy) {
            if (x == null) throw noForward();
            Backend b = p.backend();
            b.gemm(true, false, 1f, dy, h, 1f, up.grad());   // dU [out, rank] += dy^T h
            Tensor dh = b.empty(p.arena(), DType.F32, x.size(0), rank);
            b.gemm(false, false, 1f, dy, up.value(), 0f, dh); // dh [N, rank] = dy U
            b.gemm(true, false, 1f, dh, x, 1f, down.grad());  // dD [rank, in] += dh^T x
            Tensor dx = b.empty(p.arena(), DType.F32, x.shape());
            b.gemm(false, false, 1f, dh, down.value(), 0f, dx); // dx [N, in] = dh D
            return dx;
        }
    }

    private static final String SPEC = "{\"input\": [6], \"layers\": [{\"type\": \"lowrank\", \"in\": 6, \"rank\": 2, \"out\": 5}, {\"type\": \"tanh\"},"
        + "{\"type\": \"linear\", \"in\": 5, \"out\": 3}]}";
    private static final LayerRegistry TYPES = LayerRegistry.standard().with(LowRank.KIND);
    private final Backend cpu = CpuBackend.get();

    @Test
    void aRegisteredLayerBuildsWithStateDictNamesAndChecksItsKeys() {
        IllegalArgumentException unknown = assertThrows(IllegalArgumentException.class, () -> ModelSpec.parse("m.json", SPEC));
        assertTrue(unknown.getMessage().contains("unknown layer type \"lowrank\""), unknown.getMessage());
        IllegalArgumentException key = assertThrows(IllegalArgumentException.class,
            () -> ModelSpec.parse("m.json", SPEC.replace("\"rank\": 2", "\"ranks\": 2"), TYPES));
        assertTrue(key.getMessage().contains("layers[0] (lowrank): unknown key \"ranks\" (allowed: in, out, rank)"), key.getMessage());
        IllegalArgumentException value = assertThrows(IllegalArgumentException.class,
            () -> ModelSpec.parse("m.json", SPEC.replace("\"rank\": 2", "\"rank\": 0"), TYPES).build(cpu, 0));
        assertEquals("m.json: layers[0] (lowrank): \"rank\" must be a positive integer, got 0", value.getMessage());
        assertThrows(IllegalArgumentException.class, () -> TYPES.with(LowRank.KIND), "a type registered twice");
        try (Model m = ModelSpec.parse("m.json", SPEC, TYPES).build(cpu, 1)) {
            assertEquals(List.of("0.down.weight", "0.up.weight", "2.weight", "2.bias"), m.parameters().stream().map(Parameter::name).toList());
            assertEquals(6 * 2 + 2 * 5 + 5 * 3 + 3, m.parameterCount());
            assertArrayEquals(new long[] {3}, m.outputShape());
            assertFalse(m.hasDropout());
        }
    }

    /** d(sum w * model(x))/d(theta) of the user layer's parameters and /dx against central differences. */
    @Test
    void itsGradientsMatchFiniteDifferences() {
        long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
        System.out.println("UserLayerTest seed " + seed + " (replay: -Ddistill4j.test.seed=" + seed + ")");
        Random r = new Random(seed);
        float[] x = new float[4 * 6], w = new float[4 * 3];
        for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
        for (int i = 0; i < w.length; i++) w[i] = (float) r.nextGaussian();
        try (Model m = ModelSpec.parse("m.json", SPEC, TYPES).build(cpu, seed)) {
            float[] dx;
            try (Arena arena = Arena.ofShared(); Tensor tx = cpu.fromArray(x, 4, 6); Tensor dy = cpu.fromArray(w, 4, 3)) {
                Layer.Pass pass = new Layer.Pass(cpu, arena, true, 0, 0);
                m.zeroGrad();
                m.forward(pass, tx);
                dx = m.backward(pass, dy).toFloatArray();
            }
            double h = 1e-2;
            for (int i = 0; i < x.length; i++) {
                float saved = x[i];
                x[i] = (float) (saved + h);
                double up = loss(m, x, w);
                x[i] = (float) (saved - h);
                double down = loss(m, x, w);
                x[i] = saved;
                assertEquals((up - down) / (2 * h), dx[i], 1e-2 * Math.max(1, Math.abs(dx[i])), "dx[" + i + "]");
            }
            for (Parameter p : m.parameters()) {
                float[] value = p.value().toFloatArray(), grad = p.grad().toFloatArray();
                for (int i = 0; i < value.length; i++) {
                    float saved = value[i];
                    value[i] = (float) (saved + h);
                    p.value().copyFrom(value);
                    double up = loss(m, x, w);
                    value[i] = (float) (saved - h);
                    p.value().copyFrom(value);
                    double down = loss(m, x, w);
                    value[i] = saved;
                    p.value().copyFrom(value);
                    double numeric = (up - down) / (2 * h);
                    assertEquals(numeric, grad[i], 1e-2 * Math.max(1, Math.abs(numeric)), p.name() + "[" + i + "]");
                }
            }
        }
    }

    private double loss(Model m, float[] x, float[] w) {
        try (Arena arena = Arena.ofShared(); Tensor tx = cpu.fromArray(x, 4, 6)) {
            float[] y = m.forward(new Layer.Pass(cpu, arena, false, 0, 0), tx).toFloatArray();
            double s = 0;
            for (int i = 0; i < y.length; i++) s += (double) y[i] * w[i];
            return s;
        }
    }

    /** The Trainer trains it (its parameters move, the loss falls), and the Predictor serves it through its eval forward. */
    @Test
    void itTrainsAndServes() {
        Synthetic.Task task = Synthetic.task(5, 6, 3, 2, 1.5f, 1f);
        var train = task.sample(256, 1, 0f);
        var test = task.sample(128, 2, 0f);
        TrainingConfig cfg = new TrainingConfig(TrainingConfig.Optimizer.SGD, 0.1f, 0.9f, true, 0f, TrainingConfig.Schedule.CONSTANT, 0, 5, 32,
            42, 1, 1, 1, 0f);
        try (Model m = ModelSpec.parse("m.json", SPEC, TYPES).build(cpu, 3)) {
            float[] before = m.parameters().get(0).value().toFloatArray();
            double lossBefore = Trainer.evaluate(cpu, m, test, 64)[0];
            Trainer.Result result = Trainer.supervised(cpu, m, cfg).fit(train, test, x -> { });
            assertNotEquals(before[0], m.parameters().get(0).value().toFloatArray()[0], "the user layer's weight was trained");
            assertTrue(result.testLoss() < lossBefore, "test loss " + lossBefore + " -> " + result.testLoss());

            float[] input = new float[2 * 6];
            for (int i = 0; i < input.length; i++) input[i] = (float) Math.sin(i);
            float[] expected;
            try (Arena arena = Arena.ofShared(); Tensor tx = cpu.fromArray(input, 2, 6)) {
                expected = m.forward(new Layer.Pass(cpu, arena, false, 0, 0), tx).toFloatArray();
            }
            float[] got = new float[2 * 3];
            try (Predictor p = Predictor.of(m, Predictor.Options.defaults())) {
                p.predict(input, got);
            }
            assertArrayEquals(expected, got, "the plan's forward step equals Model.forward");
        }
    }
}
