package org.distill4j.core.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.distill4j.core.DType;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.junit.jupiter.api.Test;

/**
 * A frozen model-spec teacher in bf16 (issue 23): the run says so, its soft loss is close to the
 * float32 teacher's but not equal (the teacher's logits moved by bf16 rounding only), a teacher
 * cache holds the bf16 teacher's logits, and what it does not support yet (a hint) is a one-line
 * error whichever is set first.
 */
class TrainerBf16TeacherTest {
    private static final String TEACHER = "{\"input\": [12], \"layers\": [{\"type\": \"linear\", \"in\": 12, \"out\": 48}, {\"type\": \"relu\"},"
        + "{\"type\": \"linear\", \"in\": 48, \"out\": 24}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 24, \"out\": 4}]}";
    private static final String STUDENT = "{\"input\": [12], \"layers\": [{\"type\": \"linear\", \"in\": 12, \"out\": 16}, {\"type\": \"tanh\"},"
        + "{\"type\": \"linear\", \"in\": 16, \"out\": 4}]}";

    private final Synthetic.Task task = Synthetic.task(5, 12, 4, 2, 1.5f, 1f);
    private final ArrayDataset train = task.sample(300, 1, 0.1f), test = task.sample(100, 2, 0f);
    private final TrainingConfig config = new TrainingConfig(TrainingConfig.Optimizer.ADAMW, 3e-3f, 0.9f, true, 1e-4f, TrainingConfig.Schedule.COSINE,
        1, 2, 32, 42, 1, 1, 1, 0f);

    private record Run(List<Trainer.Metrics> history, List<String> notes) {}

    private Run distil(DType teacherDtype) {
        return distil(teacherDtype, null);
    }

    private Run distil(DType teacherDtype, TeacherCache.Options cache) {
        try (Model teacher = ModelSpec.parse("t", TEACHER).build(CpuBackend.get(), 3); Model s = ModelSpec.parse("s", STUDENT).build(CpuBackend.get(), 7)) {
            List<Trainer.Metrics> h = new ArrayList<>();
            List<String> notes = new ArrayList<>();
            DistillationTrainer.of(CpuBackend.get(), s, DistillationLoss.hinton(2f, 0.7f), config).teacher(teacher).teacherDtype(teacherDtype).teacherCache(cache).build()
                .onNote(notes::add).fit(train, test, h::add);
            return new Run(h, notes);
        }
    }

    @Test
    void bf16TeacherMovesTheSoftLossByRoundingOnly() {
        Run f32 = distil(DType.F32), bf16 = distil(DType.BF16);
        assertTrue(bf16.notes().stream().anyMatch(n -> n.startsWith("teacher runs in bf16")), bf16.notes().toString());
        assertTrue(f32.notes().stream().noneMatch(n -> n.contains("bf16")), f32.notes().toString());
        assertEquals(f32.history().size(), bf16.history().size());
        for (int i = 0; i < f32.history().size(); i++) {
            double a = f32.history().get(i).softLoss(), b = bf16.history().get(i).softLoss();
            System.out.println("TrainerBf16TeacherTest: epoch " + (i + 1) + " soft loss " + b + " (bf16 teacher), " + a + " (float32)");
            assertTrue(a > 0 && Math.abs(a - b) <= 2e-2 * a, "epoch " + (i + 1) + ": soft loss " + b + " with a bf16 teacher, " + a + " with float32");
            assertNotEquals(a, b, "epoch " + (i + 1) + ": a bf16 teacher gave exactly the float32 soft loss");
        }
    }

    /**
     * A teacher cache of a bf16 teacher holds the bf16 teacher's logits: the soft loss equals the
     * live bf16 teacher's (within 1e-5: the cache runs the plan on batches in file order), not the
     * float32 one's; a cache file of a float32 teacher is not reused for a bf16 one (own fingerprint).
     */
    @Test
    void aTeacherCacheHoldsTheBf16TeachersLogits(@org.junit.jupiter.api.io.TempDir java.nio.file.Path tmp) {
        Run live = distil(DType.BF16), f32 = distil(DType.F32);
        Run cached = distil(DType.BF16, TeacherCache.Options.parse("device", "f32", 0));
        for (int i = 0; i < live.history().size(); i++) {
            double l = live.history().get(i).softLoss(), c = cached.history().get(i).softLoss(), f = f32.history().get(i).softLoss();
            assertEquals(l, c, 1e-5 * l, "epoch " + (i + 1) + ": cached bf16 teacher against the live one");
            assertTrue(Math.abs(c - f) > 1e-5 * l, "epoch " + (i + 1) + ": the cached bf16 teacher's soft loss " + c + " is float32's " + f);
        }
        TeacherCache.Options file = TeacherCache.Options.parse("file:" + tmp.resolve("t.safetensors"), "f32", 0);
        String[] expected = {"computed", "computed", "reused"};
        DType[] dtypes = {DType.F32, DType.BF16, DType.BF16};
        for (int i = 0; i < 3; i++) {
            Run r = distil(dtypes[i], file);
            String note = r.notes().stream().filter(n -> n.startsWith("teacher cache:")).findFirst().orElseThrow();
            assertTrue(note.contains(expected[i]), dtypes[i] + " teacher, run " + (i + 1) + ": " + note);
        }
    }

    @Test
    void unsupportedCombinationsAreOneLine() {
        try (Model teacher = ModelSpec.parse("t", TEACHER).build(CpuBackend.get(), 3); Model s = ModelSpec.parse("s", STUDENT).build(CpuBackend.get(), 7)) {
            DistillationLoss kd = DistillationLoss.hinton(2f, 0.7f);
            List<Runnable> cases = List.of(
                () -> Trainer.distillation(CpuBackend.get(), s, teacher, kd, config).withHint(new FeatureHint(1, 1, 1f)).withTeacherDtype(DType.BF16),
                () -> Trainer.distillation(CpuBackend.get(), s, teacher, kd, config).withTeacherDtype(DType.BF16).withHint(new FeatureHint(1, 1, 1f)),
                () -> Trainer.distillation(CpuBackend.get(), s, teacher, kd, config).withTeacherDtype(DType.F16),
                () -> Trainer.supervised(CpuBackend.get(), s, config).withTeacherDtype(DType.BF16));
            for (Runnable c : cases) {
                var e = assertThrows(IllegalArgumentException.class, c::run);
                assertEquals(1, e.getMessage().lines().count(), e.getMessage());
                assertTrue(e.getMessage().contains("bf16") || e.getMessage().contains("F32 or BF16") || e.getMessage().contains("needs a teacher"), e.getMessage());
            }
        }
    }
}
