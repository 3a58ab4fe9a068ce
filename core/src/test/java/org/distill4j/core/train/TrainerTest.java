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

    /** A CNN with 3 x 4 x 4 inputs: convolutions (with a bias), batch norm (32 channels: on oneDNN where it is the engine), max and average pooling. */
    private static final String CNN = "{\"input\": [3, 4, 4], \"layers\": [{\"type\": \"conv2d\", \"in\": 3, \"out\": 32, \"kernel\": 3, \"padding\": 1},"
        + "{\"type\": \"batchnorm2d\", \"features\": 32}, {\"type\": \"relu\"}, {\"type\": \"maxpool2d\", \"kernel\": 2},"
        + "{\"type\": \"conv2d\", \"in\": 32, \"out\": 8, \"kernel\": 1, \"bias\": false}, {\"type\": \"relu\"}, {\"type\": \"avgpool2d\", \"kernel\": 2},"
        + "{\"type\": \"flatten\"}, {\"type\": \"linear\", \"in\": 8, \"out\": 4}]}";

    /**
     * The CNN killed after step 8 and resumed from the step-6 checkpoint ends with the uninterrupted
     * run's weights bit for bit, on this process's CPU engine (oneDNN's convolution, pooling and, at
     * 32 channels, batch norm where present: its primitives must be deterministic for a given shape
     * and thread count).
     */
    @Test
    void cnnResumesBitForBit() {
        ArrayDataset imageTrain = images(500, 1), imageTest = images(200, 2);
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, 1);
        List<float[]> full;
        try (Model m = ModelSpec.parse("m", CNN).build(CpuBackend.get(), 7)) {
            Trainer.supervised(CpuBackend.get(), m, cfg).fit(imageTrain, imageTest, x -> { });
            full = weights(m);
        }
        Checkpoints ck = new Checkpoints(tmp.resolve("cnn"), 3, 2, true);
        try (Model m = ModelSpec.parse("m", CNN).build(CpuBackend.get(), 7)) {
            Trainer.supervised(CpuBackend.get(), m, cfg).stopAfter(8).fit(imageTrain, imageTest, x -> { }, ck);
        }
        try (Model m = ModelSpec.parse("m", CNN).build(CpuBackend.get(), 99)) {
            Trainer.supervised(CpuBackend.get(), m, cfg).fit(imageTrain, imageTest, x -> { }, ck);
            List<float[]> resumed = weights(m);
            for (int i = 0; i < full.size(); i++) assertArrayEquals(full.get(i), resumed.get(i), "CNN parameter " + i + " on " + org.distill4j.core.cpu.CpuBlas.provider());
        }
    }

    /** n Gaussian 3 x 4 x 4 images, labelled by which quarter of the 48 values has the largest sum (a learnable rule; the seed fixes them). */
    private static ArrayDataset images(int n, long seed) {
        java.util.Random r = new java.util.Random(seed);
        float[] x = new float[n * 48];
        long[] y = new long[n];
        for (int i = 0; i < n; i++) {
            double[] sums = new double[4];
            for (int j = 0; j < 48; j++) {
                x[i * 48 + j] = (float) r.nextGaussian();
                sums[j / 12] += x[i * 48 + j];
            }
            for (int c = 1; c < 4; c++) if (sums[c] > sums[(int) y[i]]) y[i] = c;
        }
        return new ArrayDataset(x, y, new long[] {3, 4, 4});
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

    /** DistillationTrainer builds the same trainer as Trainer.distillation + options: the same weights. */
    @Test
    void distillationTrainerBuildsTheSameTrainer() {
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, 1);
        FeatureHint hint = new FeatureHint(1, 3, 0.5f);
        Run direct = distil(PLAIN, t -> t.withHint(hint), cfg);
        try (Model teacher = ModelSpec.parse("t", TEACHER_WIDE).build(CpuBackend.get(), 3); Model m = ModelSpec.parse("s", PLAIN).build(CpuBackend.get(), 7)) {
            DistillationTrainer.of(CpuBackend.get(), m, DistillationLoss.hinton(2f, 0.7f), cfg).teacher(teacher).hint(hint).build().fit(train, test, x -> { });
            List<float[]> w = weights(m);
            for (int i = 0; i < w.size(); i++) assertArrayEquals(direct.weights().get(i), w.get(i), "parameter " + i);
        }
        var e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
            () -> DistillationTrainer.of(CpuBackend.get(), null, DistillationLoss.hinton(2f, 0.7f), cfg).build());
        assertTrue(e.getMessage().contains("at least one teacher"), e.getMessage());
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

    private static final String BN_NO_DROPOUT = "{\"input\": [12], \"layers\": [{\"type\": \"linear\", \"in\": 12, \"out\": 32},"
        + "{\"type\": \"batchnorm1d\", \"features\": 32}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 32, \"out\": 4}]}";
    private static final String TEACHER_WIDE = "{\"input\": [12], \"layers\": [{\"type\": \"linear\", \"in\": 12, \"out\": 48}, {\"type\": \"relu\"},"
        + "{\"type\": \"linear\", \"in\": 48, \"out\": 24}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 24, \"out\": 4}]}";

    private record Run(List<float[]> weights, List<Trainer.Metrics> history, Trainer.Result result) {}

    private Run distil(String studentSpec, java.util.function.UnaryOperator<Trainer> setup, TrainingConfig cfg) {
        try (Model teacher = ModelSpec.parse("t", TEACHER_WIDE).build(CpuBackend.get(), 3); Model m = ModelSpec.parse("s", studentSpec).build(CpuBackend.get(), 7)) {
            List<Trainer.Metrics> h = new ArrayList<>();
            Trainer.Result r = setup.apply(Trainer.distillation(CpuBackend.get(), m, teacher, DistillationLoss.hinton(2f, 0.7f), cfg)).fit(train, test, h::add);
            return new Run(weights(m), h, r);
        }
    }

    /**
     * The graph path (static input buffers, one recorded step replayed, optimizer scalars read from
     * the device) gives exactly the direct path's weights and losses: on the CPU the recorded step
     * is replayed by running it again, which checks the trainer's side of capture.
     */
    @Test
    void graphReplayEqualsDirectSteps() {
        for (int accumulation : new int[] {1, 2}) {
            // 500 rows in batches of 32: the last group of each epoch is short and runs directly.
            TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, accumulation);
            Run off = distil(BN_NO_DROPOUT, t -> t.graph(Trainer.GraphMode.OFF), cfg);
            Run on = distil(BN_NO_DROPOUT, t -> t.graph(Trainer.GraphMode.ON), cfg);
            assertEquals("on", on.result().graphed());
            for (int i = 0; i < off.weights().size(); i++) assertArrayEquals(off.weights().get(i), on.weights().get(i), "parameter " + i);
            for (int i = 0; i < off.history().size(); i++) {
                assertEquals(off.history().get(i).trainLoss(), on.history().get(i).trainLoss(), 0.0, "epoch " + (i + 1) + " loss");
            }
        }
        TrainingConfig sgd = config(TrainingConfig.Optimizer.SGD, 50, 1);
        Run off = distil(PLAIN, t -> t.graph(Trainer.GraphMode.OFF), sgd), on = distil(PLAIN, t -> t.graph(Trainer.GraphMode.ON), sgd);
        for (int i = 0; i < off.weights().size(); i++) assertArrayEquals(off.weights().get(i), on.weights().get(i), "SGD parameter " + i);
    }

    @Test
    void graphOnIsRefusedWhenTheStepCannotBeReplayed() {
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, 1);
        var e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
            () -> distil(WITH_DROPOUT_AND_BN, t -> t.graph(Trainer.GraphMode.ON), cfg));
        assertTrue(e.getMessage().contains("dropout"), e.getMessage());
        Run auto = distil(PLAIN, t -> t, cfg);
        assertEquals("off: not on a GPU", auto.result().graphed());
    }

    /** The hint term's gradient against central differences of its loss, for the linear and the 1x1-conv adapter. */
    @Test
    void hintGradientMatchesFiniteDifferences() {
        CpuBackend b = CpuBackend.get();
        for (long[][] shapes : new long[][][] {{{6}, {5}}, {{3, 2, 2}, {4, 2, 2}}}) {
            try (org.distill4j.core.nn.HintAdapter adapter = new org.distill4j.core.nn.HintAdapter(b, shapes[0], shapes[1], 9);
                 java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
                long n = 3, groupRows = 5;
                java.util.Random rnd = new java.util.Random(4);
                float[] hs = new float[(int) (n * org.distill4j.core.Tensor.numel(shapes[0]))], ht = new float[(int) (n * org.distill4j.core.Tensor.numel(shapes[1]))];
                for (int i = 0; i < hs.length; i++) hs[i] = (float) rnd.nextGaussian();
                for (int i = 0; i < ht.length; i++) ht[i] = (float) rnd.nextGaussian();
                long[] sShape = withBatch(n, shapes[0]), tShape = withBatch(n, shapes[1]);
                var out = b.empty(arena, org.distill4j.core.DType.F32, 1);
                var grad = adapter.loss(new org.distill4j.core.nn.Layer.Pass(b, arena, true, 0, 0), b.fromArray(hs, sShape), b.fromArray(ht, tShape), 0.7f,
                    groupRows, out).toFloatArray();
                for (int i = 0; i < hs.length; i += 2) {
                    double h = 1e-2;
                    float[] plus = hs.clone(), minus = hs.clone();
                    plus[i] += (float) h;
                    minus[i] -= (float) h;
                    adapter.loss(new org.distill4j.core.nn.Layer.Pass(b, arena, true, 0, 0), b.fromArray(plus, sShape), b.fromArray(ht, tShape), 0.7f, groupRows, out);
                    double lp = out.item();
                    adapter.loss(new org.distill4j.core.nn.Layer.Pass(b, arena, true, 0, 0), b.fromArray(minus, sShape), b.fromArray(ht, tShape), 0.7f, groupRows, out);
                    double lm = out.item();
                    assertEquals((lp - lm) / (2 * h), grad[i], 2e-3, "d hint / d hs[" + i + "] for " + adapter.kind());
                }
            }
        }
    }

    private static long[] withBatch(long n, long[] s) {
        long[] r = new long[s.length + 1];
        r[0] = n;
        System.arraycopy(s, 0, r, 1, s.length);
        return r;
    }

    /** A hint run trains the adapter (its term falls), accumulates exactly, and resumes with the adapter from the checkpoint. */
    @Test
    void hintDistillationTrainsAndAccumulates() {
        FeatureHint hint = new FeatureHint(1, 3, 0.5f); // student tanh [32] <- teacher relu [24]
        Run first = distil(PLAIN, t -> t.withHint(hint), config(TrainingConfig.Optimizer.ADAMW, 32, 1));
        double h0 = first.history().getFirst().hintLoss(), h1 = first.history().getLast().hintLoss();
        assertTrue(Double.isFinite(h0) && h1 < h0, "hint term " + h0 + " -> " + h1);
        for (Trainer.Metrics m : first.history()) {
            // The reported terms add up to the step's objective.
            assertEquals(m.trainLoss(), m.softLoss() + m.hardLoss() + m.hintLoss(), 1e-5 * Math.max(1, Math.abs(m.trainLoss())), "terms at epoch " + m.epoch());
            assertTrue(m.softLoss() > 0 && m.hardLoss() > 0, m.toString());
        }
        assertTrue(first.result().testAccuracy() > 0.6, "accuracy with a hint: " + first.result().testAccuracy());
        Run big = distil(PLAIN, t -> t.withHint(hint), config(TrainingConfig.Optimizer.SGD, 64, 1));
        Run acc = distil(PLAIN, t -> t.withHint(hint), config(TrainingConfig.Optimizer.SGD, 16, 4));
        for (int i = 0; i < big.weights().size(); i++) {
            for (int j = 0; j < big.weights().get(i).length; j++) {
                assertEquals(big.weights().get(i)[j], acc.weights().get(i)[j], 1e-5 * Math.max(1, Math.abs(big.weights().get(i)[j])), "parameter " + i + "[" + j + "]");
            }
        }
        var e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
            () -> distil(PLAIN, t -> t.withHint(new FeatureHint(1, 9, 1f)), config(TrainingConfig.Optimizer.SGD, 64, 1)));
        assertTrue(e.getMessage().contains("layers 0..4, not 9"), e.getMessage());
    }

    @Test
    void hintResumesBitForBit() throws Exception {
        FeatureHint hint = new FeatureHint(0, 2, 1f);
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 64, 1);
        Run full = distil(PLAIN, t -> t.withHint(hint), cfg);
        Checkpoints ck = new Checkpoints(tmp.resolve("hint-ck"), 3, 2, true);
        try (Model teacher = ModelSpec.parse("t", TEACHER_WIDE).build(CpuBackend.get(), 3); Model m = ModelSpec.parse("s", PLAIN).build(CpuBackend.get(), 7)) {
            Trainer.distillation(CpuBackend.get(), m, teacher, DistillationLoss.hinton(2f, 0.7f), cfg).withHint(hint).stopAfter(7).fit(train, test, x -> { }, ck);
        }
        try (Model teacher = ModelSpec.parse("t", TEACHER_WIDE).build(CpuBackend.get(), 3); Model m = ModelSpec.parse("s", PLAIN).build(CpuBackend.get(), 7)) {
            Trainer.distillation(CpuBackend.get(), m, teacher, DistillationLoss.hinton(2f, 0.7f), cfg).withHint(hint).fit(train, test, x -> { }, ck);
            List<float[]> resumed = weights(m);
            for (int i = 0; i < full.weights().size(); i++) assertArrayEquals(full.weights().get(i), resumed.get(i), "parameter " + i);
        }
    }

    /** Cached teacher logits (device or memory-mapped file, f32) train the student as the live teacher does; bf16 comes close. */
    @Test
    void teacherCacheMatchesTheLiveTeacher() throws Exception {
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, 1);
        Run live = distil(PLAIN, t -> t, cfg);
        Run device = distil(PLAIN, t -> t.withTeacherCache(new TeacherCache.Options(TeacherCache.Storage.DEVICE, org.distill4j.core.DType.F32, null)), cfg);
        Path file = tmp.resolve("cache/teacher.safetensors");
        List<String> notes = new ArrayList<>();
        Run mapped = distil(PLAIN, t -> t.onNote(notes::add).withTeacherCache(TeacherCache.Options.parse("file:" + file, "f32")), cfg);
        Run again = distil(PLAIN, t -> t.onNote(notes::add).withTeacherCache(TeacherCache.Options.parse("file:" + file, "f32")), cfg);
        assertTrue(notes.stream().anyMatch(n -> n.contains("computed")) && notes.stream().anyMatch(n -> n.contains("reused")), notes.toString());
        for (Run r : List.of(device, mapped, again)) {
            for (int i = 0; i < live.weights().size(); i++) {
                for (int j = 0; j < live.weights().get(i).length; j++) {
                    assertEquals(live.weights().get(i)[j], r.weights().get(i)[j], 1e-5 * Math.max(1, Math.abs(live.weights().get(i)[j])), "parameter " + i + "[" + j + "]");
                }
            }
        }
        Run bf16 = distil(PLAIN, t -> t.withTeacherCache(TeacherCache.Options.parse("device", "bf16")), cfg);
        assertEquals(live.result().testAccuracy(), bf16.result().testAccuracy(), 0.03, "bf16 cache accuracy");
        // A different teacher does not match the file's fingerprint: the cache is rebuilt, not misused.
        notes.clear();
        try (Model teacher = ModelSpec.parse("t", TEACHER_WIDE).build(CpuBackend.get(), 4); Model m = ModelSpec.parse("s", PLAIN).build(CpuBackend.get(), 7)) {
            Trainer.distillation(CpuBackend.get(), m, teacher, DistillationLoss.hinton(2f, 0.7f), cfg).onNote(notes::add)
                .withTeacherCache(TeacherCache.Options.parse("file:" + file, "f32")).stopAfter(2).fit(train, test, x -> { });
        }
        assertTrue(notes.stream().anyMatch(n -> n.contains("computed")), notes.toString());
    }

    /**
     * A top-k cache: k = C trains exactly as the full cache; k < C gives each sample's k largest
     * logits at their classes and -inf elsewhere (checked against the full table, in a shuffled
     * epoch order); with a trained teacher, top-2 and top-1 of 4 classes train students nearly as
     * well as the full cache; a file is reused for the same teacher and k and rebuilt for another k; a
     * divergence a top-k teacher cannot serve and a k above the classes are refused. (An untrained
     * teacher would not do: renormalised over its top classes, its random preferences outweigh the labels.)
     */
    @Test
    void topKTeacherCache() throws Exception {
        CpuBackend cpu = CpuBackend.get();
        org.distill4j.core.DType f32 = org.distill4j.core.DType.F32;
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, 1);
        TeacherCache.Options full = new TeacherCache.Options(TeacherCache.Storage.DEVICE, f32, null);
        Run fullRun = distil(PLAIN, t -> t.withTeacherCache(full), cfg);
        Run every = distil(PLAIN, t -> t.withTeacherCache(new TeacherCache.Options(TeacherCache.Storage.DEVICE, f32, null, 4)), cfg);
        for (int i = 0; i < fullRun.weights().size(); i++) assertArrayEquals(fullRun.weights().get(i), every.weights().get(i), "k = C, parameter " + i);

        Path file = tmp.resolve("topk/teacher.safetensors");
        long[] order = new long[(int) train.size()];
        for (int i = 0; i < order.length; i++) order[i] = (i * 7L) % order.length;  // 7 and 500 are coprime: a permutation
        try (Model teacher = ModelSpec.parse("t", TEACHER_WIDE).build(cpu, 3)) {
            Trainer.supervised(cpu, teacher, cfg).fit(train, test, x -> { });
            try (TeacherCache dense = TeacherCache.build(cpu, List.of(teacher), 2f, train, 64, full);
                 TeacherCache top2 = TeacherCache.build(cpu, List.of(teacher), 2f, train, 64, TeacherCache.Options.parse("file:" + file, "f32", 2));
                 org.distill4j.core.Tensor a = cpu.empty(f32, 100, 4); org.distill4j.core.Tensor b = cpu.empty(f32, 100, 4)) {
                assertEquals(train.size() * 2 * (4 + 4), top2.tableBytes(), "values and classes, k = 2");
                dense.startEpoch(order);
                top2.startEpoch(order);
                dense.lookup(300, 100, a);
                top2.lookup(300, 100, b);
                float[] all = a.toFloatArray(), kept = b.toFloatArray();
                for (int r = 0; r < 100; r++) {
                    int[] best = TeacherCache.topK(all, r * 4, 4, 2);
                    for (int c = 0; c < 4; c++) {
                        boolean isKept = c == best[0] || c == best[1];
                        assertTrue(isKept || all[r * 4 + c] <= all[r * 4 + best[1]], "row " + r + ": class " + c + " beats a kept one");
                        assertEquals(isKept ? all[r * 4 + c] : Float.NEGATIVE_INFINITY, kept[r * 4 + c], "row " + r + ", class " + c);
                    }
                }
            }
            List<String> notes = new ArrayList<>();
            java.util.function.Function<TeacherCache.Options, Double> student = options -> {
                try (Model m = ModelSpec.parse("s", PLAIN).build(cpu, 7)) {
                    return Trainer.distillation(cpu, m, teacher, DistillationLoss.hinton(2f, 0.7f), cfg).onNote(notes::add).withTeacherCache(options)
                        .fit(train, test, x -> { }).testAccuracy();
                }
            };
            double fullAccuracy = student.apply(full);
            double top2Accuracy = student.apply(TeacherCache.Options.parse("file:" + file, "f32", 2));
            assertTrue(lastCacheNote(notes).contains("F32 top-2") && lastCacheNote(notes).contains("reused"), "the file of the same teacher and k is reused: " + notes);
            double top1Accuracy = student.apply(TeacherCache.Options.parse("file:" + file, "bf16", 1));
            assertTrue(lastCacheNote(notes).contains("BF16 top-1") && lastCacheNote(notes).contains("computed"), "another k (and dtype) rebuilds: " + notes);
            System.out.println("topKTeacherCache: test accuracy full " + fullAccuracy + ", top-2 " + top2Accuracy + ", top-1 " + top1Accuracy);
            // Measured (fixed seeds, 200 test samples): full 0.82, top-2 0.735, top-1 0.82; chance is 0.25. The k = C run
            // above is the exact check; this one says that a cut teacher still teaches.
            assertTrue(fullAccuracy > 0.8, "full cache: " + fullAccuracy);
            assertTrue(top2Accuracy > 0.7 && top1Accuracy > 0.7, "top-2 " + top2Accuracy + ", top-1 " + top1Accuracy + " (full cache " + fullAccuracy + ")");

            try (Model m = ModelSpec.parse("s", PLAIN).build(cpu, 7)) {
                var reverse = new DistillationLoss(org.distill4j.core.loss.Divergence.REVERSE_KL, 2f, 0.7f, 0.5f, -100);
                var e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                    () -> Trainer.distillation(cpu, m, teacher, reverse, cfg).withTeacherCache(TeacherCache.Options.parse("device", "f32", 2)));
                assertTrue(e.getMessage().contains("--divergence kl, or jsd with beta < 1"), e.getMessage());
            }
            var tooMany = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> TeacherCache.build(cpu, List.of(teacher), 2f, train, 64, TeacherCache.Options.parse("device", "f32", 5)));
            assertTrue(tooMany.getMessage().contains("4 classes"), tooMany.getMessage());
        }
    }

    private static String lastCacheNote(List<String> notes) {
        return notes.stream().filter(n -> n.startsWith("teacher cache")).reduce((a, b) -> b).orElse("");
    }

    /** The top-k selection: largest first, equal values to the lower class, NaN as the largest (Float.compare). */
    @Test
    void topKSelection() {
        float[] x = {9f, 1f, 3f, 3f, Float.NEGATIVE_INFINITY, Float.NaN, 2f};
        assertArrayEquals(new int[] {5, 0, 2, 3, 6, 1, 4}, TeacherCache.topK(x, 0, 7, 7), "every class");
        assertArrayEquals(new int[] {4, 1, 2}, TeacherCache.topK(x, 1, 6, 3), "the row x[1..7), its classes counted from 1");
        assertArrayEquals(new int[] {0}, TeacherCache.topK(x, 0, 5, 1), "k = 1 without the NaN");
    }

    @Test
    void bf16RoundsToNearestEven() {
        assertEquals((short) 0x3f80, org.distill4j.core.Bf16.fromFloat(1f));
        assertEquals((short) 0x3f80, org.distill4j.core.Bf16.fromFloat(Float.intBitsToFloat(0x3f808000))); // tie, even stays
        assertEquals((short) 0x3f82, org.distill4j.core.Bf16.fromFloat(Float.intBitsToFloat(0x3f818000))); // tie, odd rounds up
        assertEquals((short) 0x3f81, org.distill4j.core.Bf16.fromFloat(Float.intBitsToFloat(0x3f808001)));
        assertEquals((short) 0x7fc0, org.distill4j.core.Bf16.fromFloat(Float.NaN));
    }

    /** A batch with a NaN sample: stops with the step number, or with skipNonFinite is skipped and counted while training goes on. */
    @Test
    void nonFiniteBatchStopsOrIsSkipped() {
        float[] x = new float[500 * 12];
        long[] y = new long[500];
        for (int i = 0; i < 500; i++) {
            float[] one = new float[12];
            java.lang.foreign.MemorySegment seg = java.lang.foreign.MemorySegment.ofArray(one);
            train.sample(i, seg, 0);
            System.arraycopy(one, 0, x, i * 12, 12);
            y[i] = train.label(i);
        }
        x[123 * 12 + 5] = Float.NaN;
        ArrayDataset poisoned = new ArrayDataset(x, y, new long[] {12});
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 50, 1);
        try (Model m = ModelSpec.parse("m", PLAIN).build(CpuBackend.get(), 7)) {
            var e = org.junit.jupiter.api.Assertions.assertThrows(IllegalStateException.class,
                () -> Trainer.supervised(CpuBackend.get(), m, cfg).fit(poisoned, test, z -> { }));
            assertTrue(e.getMessage().contains("at step"), e.getMessage());
        }
        try (Model m = ModelSpec.parse("m", PLAIN).build(CpuBackend.get(), 7)) {
            Trainer.Result r = Trainer.supervised(CpuBackend.get(), m, cfg).skipNonFinite(true).fit(poisoned, test, z -> { });
            assertEquals(3, r.skippedSteps(), "one poisoned batch per epoch, 3 epochs");
            for (float[] w : weights(m)) for (float v : w) assertTrue(Float.isFinite(v));
            assertTrue(r.testAccuracy() > 0.6, "accuracy after skipping: " + r.testAccuracy());
        }
    }

    /**
     * A device whose capture fails (a stand-in: the CPU backend behind a proxy that calls itself a
     * device): auto mode says why and trains on without graphs, with the weights of graph off.
     */
    @Test
    void failedCaptureFallsBackToDirectSteps() {
        org.distill4j.core.Backend cpu = CpuBackend.get();
        org.distill4j.core.Backend device = (org.distill4j.core.Backend) java.lang.reflect.Proxy.newProxyInstance(getClass().getClassLoader(),
            new Class<?>[] {org.distill4j.core.Backend.class}, (proxy, method, args) -> switch (method.getName()) {
                case "isHost" -> false;
                case "capture" -> throw new IllegalStateException("cuStreamBeginCapture failed: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
                default -> {
                    try {
                        yield method.invoke(cpu, args);
                    } catch (java.lang.reflect.InvocationTargetException e) {
                        throw e.getCause();
                    }
                }
            });
        TrainingConfig cfg = config(TrainingConfig.Optimizer.ADAMW, 32, 1);
        Run off = distil(BN_NO_DROPOUT, t -> t.graph(Trainer.GraphMode.OFF), cfg);
        List<String> notes = new ArrayList<>();
        try (Model teacher = ModelSpec.parse("t", TEACHER_WIDE).build(cpu, 3); Model m = ModelSpec.parse("s", BN_NO_DROPOUT).build(cpu, 7)) {
            Trainer.Result r = Trainer.distillation(device, m, teacher, DistillationLoss.hinton(2f, 0.7f), cfg).onNote(notes::add).fit(train, test, x -> { });
            assertTrue(r.graphed().startsWith("off: capture failed (cuStreamBeginCapture failed"), r.graphed());
            assertTrue(notes.contains("step graph on") && notes.stream().anyMatch(n -> n.startsWith("step graph off: capture failed")), notes.toString());
            List<float[]> w = weights(m);
            for (int i = 0; i < w.size(); i++) assertArrayEquals(off.weights().get(i), w.get(i), "parameter " + i);
        }
    }
}
