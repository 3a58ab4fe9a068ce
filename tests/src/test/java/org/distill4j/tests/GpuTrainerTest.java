package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.function.UnaryOperator;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.nn.Parameter;
import org.distill4j.core.train.FeatureHint;
import org.distill4j.core.train.TeacherCache;
import org.distill4j.core.train.Trainer;
import org.distill4j.core.train.TrainingConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The distillation trainer on CUDA: the captured step graph against uncaptured steps (identical
 * losses and weights), and the GPU run against the CPU run (strict FP32, close). Tag "gpu".
 */
@Tag("gpu")
class GpuTrainerTest {
    private static CudaBackend gpu;

    private static final String TEACHER = "{\"input\": [1, 8, 8], \"layers\": [{\"type\": \"conv2d\", \"in\": 1, \"out\": 8, \"kernel\": 3, \"padding\": 1},"
        + "{\"type\": \"batchnorm2d\", \"features\": 8}, {\"type\": \"relu\"}, {\"type\": \"flatten\"}, {\"type\": \"linear\", \"in\": 512, \"out\": 64},"
        + "{\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 64, \"out\": 5}]}";
    private static final String STUDENT = "{\"input\": [1, 8, 8], \"layers\": [{\"type\": \"conv2d\", \"in\": 1, \"out\": 4, \"kernel\": 3, \"padding\": 1},"
        + "{\"type\": \"batchnorm2d\", \"features\": 4}, {\"type\": \"relu\"}, {\"type\": \"flatten\"}, {\"type\": \"linear\", \"in\": 256, \"out\": 5}]}";

    private final Synthetic.Task task = Synthetic.task(11, 64, 5, 2, 1.5f, 1f);
    private final ArrayDataset train = reshape(task.sample(700, 1, 0.05f)), test = reshape(task.sample(300, 2, 0f));

    private static ArrayDataset reshape(ArrayDataset d) {
        float[] x = new float[(int) (d.size() * 64)];
        long[] y = new long[(int) d.size()];
        java.lang.foreign.MemorySegment seg = java.lang.foreign.MemorySegment.ofArray(x);
        for (int i = 0; i < d.size(); i++) {
            d.sample(i, seg, (long) i * 64);
            y[i] = d.label(i);
        }
        return new ArrayDataset(x, y, new long[] {1, 8, 8});
    }

    @BeforeAll
    static void open() {
        gpu = Gpus.openOrSkip();
        gpu.setMathMode(CudaBackend.MathMode.STRICT_FP32);
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
    }

    private record Run(List<float[]> weights, List<Double> losses, Trainer.Result result) {}

    private Run run(Backend b, UnaryOperator<Trainer> setup, int accumulation) {
        TrainingConfig cfg = new TrainingConfig(TrainingConfig.Optimizer.ADAMW, 3e-3f, 0f, false, 1e-4f, TrainingConfig.Schedule.COSINE, 2, 2, 32, 5, 1, 1,
            accumulation, 0f);
        try (Model teacher = ModelSpec.parse("t", TEACHER).build(b, 3); Model s = ModelSpec.parse("s", STUDENT).build(b, 7)) {
            List<Double> losses = new ArrayList<>();
            Trainer t = setup.apply(Trainer.distillation(b, s, teacher, DistillationLoss.hinton(3f, 0.8f), cfg));
            t.onStep(p -> losses.add(p.loss()));
            Trainer.Result r = t.fit(train, test, m -> { });
            List<float[]> w = new ArrayList<>();
            for (Parameter p : s.parameters()) if (p.value().dtype() == DType.F32) w.add(p.value().toFloatArray());
            return new Run(w, losses, r);
        }
    }

    /** The same training twice on the GPU gives the same bits (deterministic cuDNN algorithms, no float atomics). */
    @Test
    void gpuTrainingIsReproducible() {
        for (Trainer.GraphMode mode : Trainer.GraphMode.values()) {
            if (mode == Trainer.GraphMode.AUTO) continue;
            Run first = run(gpu, t -> t.graph(mode), 1), second = run(gpu, t -> t.graph(mode), 1);
            sameLosses(first, second, "graph " + mode + ", run 1 vs run 2");
        }
    }

    @Test
    void graphCaptureOnAndOffGiveTheSameLosses() {
        for (int acc : new int[] {1, 2}) {
            Run off = run(gpu, t -> t.graph(Trainer.GraphMode.OFF), acc);
            Run on = run(gpu, t -> t.graph(Trainer.GraphMode.ON), acc);
            assertEquals("on", on.result().graphed());
            sameLosses(off, on, "graph off vs on, accumulation " + acc);
            for (int i = 0; i < off.weights().size(); i++) assertArrayEquals(off.weights().get(i), on.weights().get(i), "parameter " + i);
        }
        Run cachedOn = run(gpu, t -> t.graph(Trainer.GraphMode.ON).withTeacherCache(TeacherCache.Options.parse("device", "bf16")), 1);
        Run cachedOff = run(gpu, t -> t.graph(Trainer.GraphMode.OFF).withTeacherCache(TeacherCache.Options.parse("device", "bf16")), 1);
        sameLosses(cachedOff, cachedOn, "graph off vs on with a bf16 device cache");
        // A top-k cache: dense rows built on the host and copied in before each replay (tenth session; not yet run on a GPU).
        Run topKOn = run(gpu, t -> t.graph(Trainer.GraphMode.ON).withTeacherCache(TeacherCache.Options.parse("device", "f32", 3)), 1);
        Run topKOff = run(gpu, t -> t.graph(Trainer.GraphMode.OFF).withTeacherCache(TeacherCache.Options.parse("device", "f32", 3)), 1);
        sameLosses(topKOff, topKOn, "graph off vs on with a top-3 cache");
        Run topKCpu = run(CpuBackend.get(), t -> t.withTeacherCache(TeacherCache.Options.parse("device", "f32", 3)), 1);
        for (int i = 0; i < topKCpu.losses().size(); i++) {
            assertEquals(topKCpu.losses().get(i), topKOff.losses().get(i), 2e-3 * Math.max(1, Math.abs(topKCpu.losses().get(i))), "top-3 cache, step " + (i + 1) + " loss");
        }
    }

    /** Equal per-step losses; a failure names the first step that differs. */
    private static void sameLosses(Run a, Run b, String what) {
        assertEquals(a.losses().size(), b.losses().size(), what + ": steps");
        for (int i = 0; i < a.losses().size(); i++) {
            assertEquals(a.losses().get(i), b.losses().get(i), what + ": first difference at step " + (i + 1) + " of " + a.losses().size());
        }
    }

    @Test
    void gpuTrainingFollowsTheCpu() {
        for (UnaryOperator<Trainer> setup : List.<UnaryOperator<Trainer>>of(t -> t, t -> t.withHint(new FeatureHint(2, 2, 0.5f)))) {
            Run cpu = run(CpuBackend.get(), setup, 1), cuda = run(gpu, setup, 1);
            for (int i = 0; i < cpu.losses().size(); i++) {
                assertEquals(cpu.losses().get(i), cuda.losses().get(i), 2e-3 * Math.max(1, Math.abs(cpu.losses().get(i))), "step " + (i + 1) + " loss");
            }
            assertEquals(cpu.result().testAccuracy(), cuda.result().testAccuracy(), 0.02, "test accuracy");
            assertTrue(cuda.result().testAccuracy() > 0.5, "GPU student accuracy " + cuda.result().testAccuracy());
        }
    }
}
