package org.distill4j.core.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.nn.Parameter;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class TrainerTest {
    @TempDir
    Path tmp;

    private static final String WITH_DROPOUT_AND_BN = "{\"input\": [12], \"layers\": [{\"type\": \"linear\", \"in\": 12, \"out\": 32},"
        + "{\"type\": \"batchnorm1d\", \"features\": 32}, {\"type\": \"relu\"}, {\"type\": \"dropout\", \"p\": 0.3}, {\"type\": \"linear\", \"in\": 32, \"out\": 4}]}";
    private static final String PLAIN = "{\"input\": [12], \"layers\": [{\"type\": \"linear\", \"in\": 12, \"out\": 32}, {\"type\": \"tanh\"},"
        + "{\"type\": \"linear\", \"in\": 32, \"out\": 4}]}";

    private final Synthetic.Task task = Synthetic.task(5, 12, 4, 2, 1.5f, 1f);
    private final ArrayDataset train = task.sample(500, 1, 0.1f), test = task.sample(200, 2, 0f);

    private static List<float[]> weights(Model m) {
        List<float[]> out = new ArrayList<>();
        for (Parameter p : m.parameters()) if (p.value().dtype() == org.distill4j.core.DType.F32) out.add(p.value().toFloatArray());
        return out;
    }

    private static TrainingConfig config(TrainingConfig.Optimizer opt, int batch, int accumulation) {
        return new TrainingConfig(opt, opt == TrainingConfig.Optimizer.SGD ? 0.05f : 3e-3f, 0.9f, true, 1e-4f, TrainingConfig.Schedule.COSINE, 3, 3, batch,
            42, 1, 1, accumulation, 0f);
    }

    /** Kill after step 8, resume from the step-6 checkpoint: every weight equals the uninterrupted run's, bit for bit. */
    @Test
    void resumeContinuesBitForBit() {
        for (TrainingConfig.Optimizer opt : TrainingConfig.Optimizer.values()) {
            TrainingConfig cfg = config(opt, 32, 1);
            List<float[]> full;
            try (Model m = ModelSpec.parse("m", WITH_DROPOUT_AND_BN).build(CpuBackend.get(), 7)) {
                Trainer.supervised(CpuBackend.get(), m, cfg).fit(train, test, x -> { });
                full = weights(m);
            }
            Checkpoints ck = new Checkpoints(tmp.resolve(opt.name()), 3, 2, true);
            try (Model m = ModelSpec.parse("m", WITH_DROPOUT_AND_BN).build(CpuBackend.get(), 7)) {
                Trainer.supervised(CpuBackend.get(), m, cfg).stopAfter(8).fit(train, test, x -> { }, ck);
            }
            try (Model m = ModelSpec.parse("m", WITH_DROPOUT_AND_BN).build(CpuBackend.get(), 99)) { // different init: everything comes from the checkpoint
                Trainer.Result r = Trainer.supervised(CpuBackend.get(), m, cfg).fit(train, test, x -> { }, ck);
                assertEquals(3 * 16, r.steps(), "3 epochs of 16 batches");
                List<float[]> resumed = weights(m);
                for (int i = 0; i < full.size(); i++) assertArrayEquals(full.get(i), resumed.get(i), opt + " parameter " + i);
            }
        }
    }

    @Test
    void accumulatingFourMicroBatchesEqualsOneFourTimesBatch() {
        for (boolean distill : new boolean[] {false, true}) {
            List<float[]> big, accumulated;
            try (Model teacher = ModelSpec.parse("t", PLAIN).build(CpuBackend.get(), 3)) {
                DistillationLoss kd = DistillationLoss.hinton(2f, 0.7f);
                try (Model m = ModelSpec.parse("m", PLAIN).build(CpuBackend.get(), 7)) {
                    TrainingConfig cfg = config(TrainingConfig.Optimizer.SGD, 64, 1);
                    (distill ? Trainer.distillation(CpuBackend.get(), m, teacher, kd, cfg) : Trainer.supervised(CpuBackend.get(), m, cfg)).fit(train, test, x -> { });
                    big = weights(m);
                }
                try (Model m = ModelSpec.parse("m", PLAIN).build(CpuBackend.get(), 7)) {
                    TrainingConfig cfg = config(TrainingConfig.Optimizer.SGD, 16, 4);
                    (distill ? Trainer.distillation(CpuBackend.get(), m, teacher, kd, cfg) : Trainer.supervised(CpuBackend.get(), m, cfg)).fit(train, test, x -> { });
                    accumulated = weights(m);
                }
            }
            for (int i = 0; i < big.size(); i++) {
                for (int j = 0; j < big.get(i).length; j++) {
                    assertEquals(big.get(i)[j], accumulated.get(i)[j], 1e-5 * Math.max(1, Math.abs(big.get(i)[j])), (distill ? "KD " : "") + "parameter " + i + "[" + j + "]");
                }
            }
        }
    }

    @Test
    void clippingBoundsTheUpdate() {
        TrainingConfig clipped = new TrainingConfig(TrainingConfig.Optimizer.SGD, 1f, 0f, false, 0f, TrainingConfig.Schedule.CONSTANT, 0, 1, 500, 1, 1, 1, 1,
            1e-3f);
        try (Model m = ModelSpec.parse("m", PLAIN).build(CpuBackend.get(), 7)) {
            List<float[]> before = weights(m);
            Trainer.supervised(CpuBackend.get(), m, clipped).fit(train, test, x -> { });
            List<float[]> after = weights(m);
            double sq = 0;
            for (int i = 0; i < before.size(); i++) for (int j = 0; j < before.get(i).length; j++) sq += Math.pow(after.get(i)[j] - before.get(i)[j], 2);
            assertTrue(Math.sqrt(sq) <= 1e-3 * 1.0001, "one step of lr 1 moved the weights by " + Math.sqrt(sq) + " > the clip norm 1e-3");
        }
    }

    @Test
    void twoTeachersDistilTogether() {
        try (Model t1 = ModelSpec.parse("t1", PLAIN).build(CpuBackend.get(), 1); Model t2 = ModelSpec.parse("t2", PLAIN).build(CpuBackend.get(), 2);
             Model s = ModelSpec.parse("s", PLAIN).build(CpuBackend.get(), 3)) {
            TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, 1);
            Trainer.supervised(CpuBackend.get(), t1, cfg).fit(train, test, x -> { });
            Trainer.supervised(CpuBackend.get(), t2, cfg).fit(train, test, x -> { });
            Trainer.Result r = Trainer.distillation(CpuBackend.get(), s, List.of(t1, t2), DistillationLoss.hinton(3f, 0.8f), cfg).fit(train, test, x -> { });
            assertTrue(r.testAccuracy() > 0.6, "student of two teachers: " + r.testAccuracy());
        }
    }
}
