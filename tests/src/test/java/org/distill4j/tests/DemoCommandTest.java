package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.distill4j.cli.Main;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.Trainer;
import org.distill4j.core.train.TrainingConfig;
import org.junit.jupiter.api.Test;

/** The demo a newcomer runs first: the KD student must beat the no-KD student clearly. */
class DemoCommandTest {
    @Test
    void theDistilledStudentBeatsTheBaselineByAClearMargin() throws Exception {
        StringWriter out = new StringWriter(), err = new StringWriter();
        java.nio.file.Path dir = java.nio.file.Files.createTempDirectory("demo");
        int exit = Main.run(new String[] {"demo", "--device", "cpu", "--out", dir.toString()}, new PrintWriter(out, true), new PrintWriter(err, true));
        if (ModuleLayer.boot().findModule("java.desktop").isPresent()) {
            assertTrue(java.nio.file.Files.size(dir.resolve("student-kd/curves.png")) > 1000, "curves PNG written");
        }
        assertEquals(10, java.nio.file.Files.readAllLines(dir.resolve("teacher/metrics.jsonl")).size(), "an evaluation every 3 of 30 epochs");
        assertEquals(0, exit, err.toString());
        Matcher m = Pattern.compile("from ([0-9.]+)% to ([0-9.]+)% test accuracy").matcher(out.toString());
        assertTrue(m.find(), out.toString());
        double baseline = Double.parseDouble(m.group(1)), kd = Double.parseDouble(m.group(2));
        assertTrue(kd - baseline >= 2.0, "KD " + kd + "% vs no KD " + baseline + "%:\n" + out);
        assertTrue(out.toString().contains("parameters") && out.toString().contains("samples/s"), out.toString());
    }

    @Test
    void aTeacherWithAnotherClassCountIsRejectedBeforeTraining() {
        String five = "{\"input\": [48], \"layers\": [{\"type\": \"linear\", \"in\": 48, \"out\": 5}]}";
        String ten = "{\"input\": [48], \"layers\": [{\"type\": \"linear\", \"in\": 48, \"out\": 10}]}";
        TrainingConfig cfg = new TrainingConfig(TrainingConfig.Optimizer.SGD, 0.1f, 0.9f, true, 0f, TrainingConfig.Schedule.CONSTANT, 0, 1, 32, 1, 1, 1, 1, 0f);
        try (Model teacher = ModelSpec.parse("t.json", five).build(CpuBackend.get(), 1); Model student = ModelSpec.parse("s.json", ten).build(CpuBackend.get(), 2)) {
            IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> Trainer.distillation(CpuBackend.get(), student, teacher, DistillationLoss.hinton(4f, 0.9f), cfg));
            assertTrue(e.getMessage().contains("teacher t.json outputs [5] but the student outputs [10]"), e.getMessage());
        }
        org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
            () -> new TrainingConfig(TrainingConfig.Optimizer.SGD, 0.1f, 0.9f, true, 0f, TrainingConfig.Schedule.CONSTANT, 0, 1, 0, 1, 1, 1, 1, 0f));
    }

    @Test
    void supervisedTrainingLearnsAndDataThatDoesNotFitIsRejected() {
        Synthetic.Task task = Synthetic.task(3, 8, 3, 1, 3f, 0.5f);
        ArrayDataset train = task.sample(600, 4, 0f), test = task.sample(300, 5, 0f);
        TrainingConfig cfg = new TrainingConfig(TrainingConfig.Optimizer.SGD, 0.05f, 0.9f, true, 0f, TrainingConfig.Schedule.COSINE, 5, 5, 32, 1, 1, 1, 1, 0f);
        String spec = "{\"input\": [8], \"layers\": [{\"type\": \"linear\", \"in\": 8, \"out\": 16}, {\"type\": \"tanh\"}, {\"type\": \"linear\", \"in\": 16, \"out\": 3}]}";
        try (Model m = ModelSpec.parse("m.json", spec).build(CpuBackend.get(), 1)) {
            double before = Trainer.evaluate(CpuBackend.get(), m, test, 64)[1];
            Trainer.Result r = Trainer.supervised(CpuBackend.get(), m, cfg).fit(train, test, x -> { });
            assertTrue(r.testAccuracy() > 0.9 && r.testAccuracy() > before, "accuracy " + before + " -> " + r.testAccuracy());
            assertEquals(5, r.history().size());
            ArrayDataset wide = Synthetic.task(3, 9, 3, 1, 3f, 0.5f).sample(10, 1, 0f);
            IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> Trainer.supervised(CpuBackend.get(), m, cfg).fit(wide, test, x -> { }));
            assertTrue(e.getMessage().contains("samples [9] but the model takes [8]"), e.getMessage());
        }
    }
}
