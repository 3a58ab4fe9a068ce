package org.distill4j.core.lm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.stream.IntStream;
import org.distill4j.core.Backend;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.TokenWindows;
import org.distill4j.core.io.Npy;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.distill4j.core.train.TeacherCache;
import org.distill4j.core.train.TrainingConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The decoder teacher cache on the tiny GPT-2 fixture (vocabulary 128) and random token files:
 * a full f32 cache trains as the live teacher does, a top-k cache is the live teacher's logits cut
 * to its k largest by hand, a matching file is reused and a changed token file rebuilds it, and a
 * file that is not a cache (or is a damaged one) is refused.
 */
class LmTeacherCacheTest {
    private static final Path GPT2 = Path.of("src/test/resources/fixtures/lm/gpt2");
    private static final int T = 8, WINDOWS = 7, V = 128;

    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);
    private final Backend cpu = CpuBackend.get();

    @TempDir
    Path tmp;

    LmTeacherCacheTest() {
        System.out.println("LmTeacherCacheTest random seed " + seed + " (fresh tokens every run; -Ddistill4j.test.seed=N replays one)");
    }

    /** A token file of WINDOWS windows of T + 1 tokens (and 3 spare tokens, a partial window dropped), random ids in [0, V). */
    private Path tokens(String name) throws Exception {
        long[] ids = new long[WINDOWS * T + 1 + 3];
        for (int i = 0; i < ids.length; i++) ids[i] = random.nextInt(V);
        Path p = tmp.resolve(name);
        Npy.writeLongs(p, ids, ids.length);
        return p;
    }

    private static TrainingConfig sgd(int batch, long seed) {
        return new TrainingConfig(TrainingConfig.Optimizer.SGD, 0.1f, 0.9f, false, 0.01f, TrainingConfig.Schedule.CONSTANT, 0, 2, batch, seed, 1, 10, 1, 0f);
    }

    /** The live teacher's logits [windows.length * T, V] of the given windows (eval mode, lm_head over its final hidden states). */
    private float[] liveLogits(DecoderModel teacher, TokenWindows train, long[] windows) {
        long[] inputs = new long[windows.length * T], targets = new long[windows.length * T];
        for (int r = 0; r < windows.length; r++) train.window(windows[r], inputs, targets, r);
        try (Arena a = Arena.ofShared()) {
            Tensor h = teacher.forwardHidden(new Layer.Pass(cpu, a, false, 0, 0), inputs, windows.length, T, null, null, null, null);
            Tensor z = cpu.empty(a, DType.F32, (long) windows.length * T, V);
            ChunkedLmLoss.TeacherRows.ofHead(h, teacher.lmHead(), V).logits(0, windows.length * T, z);
            return cpu.read(z);
        }
    }

    private float[] cachedLogits(LmTeacherCache cache, long[] windows) {
        try (Arena a = Arena.ofShared()) {
            Tensor z = cpu.empty(a, DType.F32, (long) windows.length * T, V);
            ChunkedLmLoss.TeacherRows rows = cache.rows(windows, T);
            // Two calls over one micro-batch, as the loss's chunks make them (rows [0, 5) and [5, n)).
            rows.logits(0, 5, z.narrow0(0, 5));
            rows.logits(5, windows.length * T - 5, z.narrow0(5, (long) windows.length * T - 5));
            return cpu.read(z);
        }
    }

    /** Two epochs of distillation (shuffled windows, 3 a micro-batch, a short last one), live teacher or full f32 cache: the same student. */
    @Test
    void fullCacheTrainsAsTheLiveTeacher() throws Exception {
        Path data = tokens("train.npy");
        DistillationLoss kd = new DistillationLoss(Divergence.KL, 2f, 0.7f, 0.5f, -100);
        try (DecoderModel teacher = DecoderModel.load(cpu, GPT2); TokenWindows train = TokenWindows.open(data, T, V)) {
            List<float[]> live, cached;
            double liveLoss, cachedLoss;
            try (DecoderModel student = DecoderModel.fromTeacherLayers(teacher, new int[] {1});
                 LmTrainer trainer = LmTrainer.distillation(student, teacher, kd, sgd(3, 7), V)) {
                liveLoss = trainer.fit(train, null, m -> { }, null).history().getLast().trainLoss();
                live = values(student);
            }
            TeacherCache.Options file = new TeacherCache.Options(TeacherCache.Storage.FILE, DType.F32, tmp.resolve("cache/full.safetensors"), 0);
            try (LmTeacherCache cache = LmTeacherCache.build(teacher, train, V, file, 2);
                 DecoderModel student = DecoderModel.fromTeacherLayers(teacher, new int[] {1});
                 LmTrainer trainer = LmTrainer.distillation(student, teacher, kd, sgd(3, 7), V).teacherSource(m -> cache.rows(m.windows(), m.t()))) {
                assertTrue(cache.keepsEveryClass());
                assertEquals(V, cache.topK());
                assertEquals((long) V * Float.BYTES, cache.bytesPerToken());
                cachedLoss = trainer.fit(train, null, m -> { }, null).history().getLast().trainLoss();
                cached = values(student);
            }
            assertEquals(liveLoss, cachedLoss, 1e-5 * Math.abs(liveLoss), "seed " + seed);
            double worst = 0;
            for (int i = 0; i < live.size(); i++) {
                for (int j = 0; j < live.get(i).length; j++) worst = Math.max(worst, Math.abs(live.get(i)[j] - cached.get(i)[j]));
            }
            System.out.printf("full f32 cache vs live teacher, 2 epochs of SGD: loss %.7f vs %.7f, worst parameter difference %.3g%n", liveLoss, cachedLoss, worst);
            assertTrue(worst < 1e-5, "worst parameter difference " + worst + ", seed " + seed);
        }
    }

    private List<float[]> values(DecoderModel m) {
        List<float[]> out = new ArrayList<>();
        for (Parameter p : Parameter.distinct(m.parameters())) out.add(cpu.read(p.value()));
        return out;
    }

    /** A top-k cache's rows are the live teacher's logits with all but each row's k largest set to -inf (f32 exactly as computed; bf16 rounded). */
    @Test
    void topKCacheIsTheLiveTeacherCutByHand() throws Exception {
        Path data = tokens("train.npy");
        int k = 5;
        long[] windows = {4, 1, 6};
        try (DecoderModel teacher = DecoderModel.load(cpu, GPT2); TokenWindows train = TokenWindows.open(data, T, V)) {
            float[] live = liveLogits(teacher, train, windows);
            float[] byHand = new float[live.length];
            Arrays.fill(byHand, Float.NEGATIVE_INFINITY);
            for (int r = 0; r < windows.length * T; r++) {
                int row = r;
                Integer[] ids = IntStream.range(0, V).boxed().toArray(Integer[]::new);
                Arrays.sort(ids, Comparator.comparingDouble((Integer i) -> -live[row * V + i]).thenComparingInt(i -> i));
                for (int j = 0; j < k; j++) byHand[row * V + ids[j]] = live[row * V + ids[j]];
            }
            TeacherCache.Options inMemory = new TeacherCache.Options(TeacherCache.Storage.DEVICE, DType.F32, null, k);
            try (LmTeacherCache cache = LmTeacherCache.build(teacher, train, V, inMemory, 3)) {
                assertFalse(cache.keepsEveryClass());
                assertEquals(k * (4 + 4), cache.bytesPerToken());
                compare(byHand, cachedLogits(cache, windows), 1e-5f, false);
            }
            TeacherCache.Options bf16 = new TeacherCache.Options(TeacherCache.Storage.FILE, DType.BF16, tmp.resolve("topk.safetensors"), k);
            try (LmTeacherCache cache = LmTeacherCache.build(teacher, train, V, bf16, 4)) {
                assertEquals(k * (2 + 4), cache.bytesPerToken());
                compare(byHand, cachedLogits(cache, windows), 1e-5f, true);
                assertTrue(cache.describe(false).contains("top-5 of 128 classes, bf16 values + int32 ids, 30 bytes a token"), cache.describe(false));
            }
        }
    }

    /** Same -inf pattern; kept values within tol of the reference (bf16: of its rounding, whose error is within 2^-8 relative). */
    private void compare(float[] expected, float[] actual, float tol, boolean bf16) {
        for (int i = 0; i < expected.length; i++) {
            String where = "row " + i / V + " id " + i % V + ", seed " + seed;
            assertEquals(Float.isInfinite(expected[i]), Float.isInfinite(actual[i]), where + ": expected " + expected[i] + ", got " + actual[i]);
            if (Float.isInfinite(expected[i])) continue;
            float e = bf16 ? Bf16.toFloat(Bf16.fromFloat(expected[i])) : expected[i];
            float bound = bf16 ? Math.max(tol, Math.abs(expected[i]) / 128f) : tol;
            assertEquals(e, actual[i], bound, where);
        }
    }

    /** A second build over the same inputs reuses the file; a changed token file or another k rebuilds it; no temporary file is left. */
    @Test
    void matchingFileIsReusedAndChangedTokensRebuildIt() throws Exception {
        Path data = tokens("train.npy"), file = tmp.resolve("c.safetensors");
        TeacherCache.Options options = new TeacherCache.Options(TeacherCache.Storage.FILE, DType.BF16, file, 7);
        long[] windows = {0, 3};
        try (DecoderModel teacher = DecoderModel.load(cpu, GPT2)) {
            float[] first;
            try (TokenWindows train = TokenWindows.open(data, T, V); LmTeacherCache c = LmTeacherCache.build(teacher, train, V, options, 3)) {
                assertFalse(c.reused());
                assertTrue(c.describe(false).contains("computed"), c.describe(false));
                first = cachedLogits(c, windows);
            }
            long written = Files.getLastModifiedTime(file).toMillis();
            try (TokenWindows train = TokenWindows.open(data, T, V); LmTeacherCache c = LmTeacherCache.build(teacher, train, V, options, 5)) {
                assertTrue(c.reused(), "the same teacher, tokens, T, k and dtype: reused");
                assertTrue(c.describe(false).contains("reused"), c.describe(false));
                assertArrayEquals(first, cachedLogits(c, windows));
            }
            assertEquals(written, Files.getLastModifiedTime(file).toMillis(), "a reused file is not rewritten");
            // One token changed: another fingerprint, the file is rebuilt in place.
            long[] ids = Npy.read(data).toLongs("tokens");
            ids[5] = (ids[5] + 1) % V;
            Npy.writeLongs(data, ids, ids.length);
            try (TokenWindows train = TokenWindows.open(data, T, V); LmTeacherCache c = LmTeacherCache.build(teacher, train, V, options, 3)) {
                assertFalse(c.reused(), "a changed token file rebuilds the cache");
                assertArrayEquals(liveTopKRounded(teacher, train, new long[] {0}, 7), Arrays.copyOf(cachedLogits(c, new long[] {0}), T * V));
            }
            TeacherCache.Options otherK = new TeacherCache.Options(TeacherCache.Storage.FILE, DType.BF16, file, 6);
            try (TokenWindows train = TokenWindows.open(data, T, V); LmTeacherCache c = LmTeacherCache.build(teacher, train, V, otherK, 3)) {
                assertFalse(c.reused(), "another k rebuilds the cache");
                assertEquals(6, c.topK());
            }
            // The same folder run in bf16 (--teacher-dtype bf16) gives other logits: another fingerprint, rebuilt.
            try (DecoderModel bf16 = DecoderModel.load(cpu, GPT2, DType.BF16); TokenWindows train = TokenWindows.open(data, T, V);
                 LmTeacherCache c = LmTeacherCache.build(bf16, train, V, otherK, 3)) {
                assertFalse(c.reused(), "a teacher run in bf16 rebuilds a cache its float32 run wrote");
                assertArrayEquals(liveTopKRounded(bf16, train, new long[] {0}, 6), Arrays.copyOf(cachedLogits(c, new long[] {0}), T * V));
            }
            try (var listing = Files.list(tmp)) {
                assertEquals(List.of(), listing.filter(p -> p.getFileName().toString().endsWith(".tmp")).toList(), "no temporary file is left");
            }
        }
    }

    /** The live teacher's top-k of one window, bf16-rounded, densified: what the cache must hold exactly. */
    private float[] liveTopKRounded(DecoderModel teacher, TokenWindows train, long[] windows, int k) {
        float[] live = liveLogits(teacher, train, windows), out = new float[live.length];
        Arrays.fill(out, Float.NEGATIVE_INFINITY);
        for (int r = 0; r < live.length / V; r++) {
            for (int id : TeacherCache.topK(live, r * V, V, k)) out[r * V + id] = Bf16.toFloat(Bf16.fromFloat(live[r * V + id]));
        }
        return out;
    }

    /** A file that is not a decoder teacher cache is refused, not overwritten; a damaged cache with this run's fingerprint is refused. */
    @Test
    void badCacheFileIsRefused() throws Exception {
        Path data = tokens("train.npy");
        try (DecoderModel teacher = DecoderModel.load(cpu, GPT2); TokenWindows train = TokenWindows.open(data, T, V)) {
            Path garbage = tmp.resolve("garbage.bin");
            Files.write(garbage, new byte[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
            var e = assertThrows(IllegalArgumentException.class,
                () -> LmTeacherCache.build(teacher, train, V, new TeacherCache.Options(TeacherCache.Storage.FILE, DType.F32, garbage, 4), 3));
            assertTrue(e.getMessage().contains(garbage.toAbsolutePath() + ": not a Distill4J decoder teacher cache"), e.getMessage());
            assertEquals(11, Files.size(garbage), "the file is left as it was");

            Path model = tmp.resolve("model.safetensors");
            Files.copy(GPT2.resolve("model.safetensors"), model);
            e = assertThrows(IllegalArgumentException.class,
                () -> LmTeacherCache.build(teacher, train, V, new TeacherCache.Options(TeacherCache.Storage.FILE, DType.F32, model, 4), 3));
            assertTrue(e.getMessage().contains("not a Distill4J decoder teacher cache (metadata 'format' is 'pt'"), e.getMessage());
            assertEquals(-1, Files.mismatch(model, GPT2.resolve("model.safetensors")), "a model file is never overwritten");

            // A cache with this run's fingerprint whose values were cut short.
            Path damaged = tmp.resolve("damaged.safetensors");
            TeacherCache.Options options = new TeacherCache.Options(TeacherCache.Storage.FILE, DType.F32, damaged, 4);
            Map<String, String> metadata;
            try (LmTeacherCache c = LmTeacherCache.build(teacher, train, V, options, 3); Safetensors st = Safetensors.open(damaged)) {
                assertFalse(c.reused());
                metadata = st.metadata();
            }
            try (Tensor values = cpu.zeros(DType.F32, 2, 4); Tensor ids = cpu.zeros(DType.I32, 2, 4)) {
                Safetensors.write(damaged, Map.of("values", values, "indices", ids), metadata);
            }
            e = assertThrows(IllegalArgumentException.class, () -> LmTeacherCache.build(teacher, train, V, options, 3));
            assertTrue(e.getMessage().contains("tensor 'values' is F32[2, 4], expected F32[" + WINDOWS * T + ", 4]"), e.getMessage());
        }
    }

    /** A build that fails half-way (an id the teacher's embedding does not have) leaves the old file as it was and no temporary file. */
    @Test
    void failedBuildLeavesNothingHalfWritten() throws Exception {
        Path good = tokens("good.npy"), file = tmp.resolve("c.safetensors");
        long[] ids = Npy.read(good).toLongs("tokens");
        ids[ids.length / 2] = V + 50; // past the teacher's 128 rows: its forward fails on the window that holds it
        Path bad = tmp.resolve("bad.npy");
        Npy.writeLongs(bad, ids, ids.length);
        TeacherCache.Options options = new TeacherCache.Options(TeacherCache.Storage.FILE, DType.F32, file, 3);
        try (DecoderModel teacher = DecoderModel.load(cpu, GPT2)) {
            try (TokenWindows train = TokenWindows.open(good, T, V); LmTeacherCache c = LmTeacherCache.build(teacher, train, V, options, 2)) {
                assertFalse(c.reused());
            }
            byte[] before = Files.readAllBytes(file);
            try (TokenWindows train = TokenWindows.open(bad, T, 0)) { // 0: ids not checked, so the teacher meets the bad one
                var e = assertThrows(RuntimeException.class, () -> LmTeacherCache.build(teacher, train, V, options, 2));
                System.out.println("the failed build: " + e);
            }
            assertArrayEquals(before, Files.readAllBytes(file), "the old cache is left as it was");
            try (var listing = Files.list(tmp)) {
                assertEquals(List.of(), listing.filter(p -> p.getFileName().toString().endsWith(".tmp")).toList(), "no temporary file is left");
            }
        }
    }

    /** The hint needs the teacher's hidden states, which a cache does not keep: refused either way round. */
    @Test
    void hintWithCacheIsRefused() throws Exception {
        DistillationLoss kd = new DistillationLoss(Divergence.KL, 1f, 0.5f, 0.5f, -100);
        try (DecoderModel teacher = DecoderModel.load(cpu, GPT2); DecoderModel student = DecoderModel.fromTeacherLayers(teacher, new int[] {0});
             LmTrainer trainer = LmTrainer.distillation(student, teacher, kd, sgd(2, 1), V)) {
            trainer.teacherSource(m -> (from, count, out) -> { });
            var e = assertThrows(IllegalArgumentException.class, () -> trainer.hint(DecoderHint.Spec.parse("1:1", DecoderHint.Kind.MSE)));
            assertTrue(e.getMessage().contains("use one or the other"), e.getMessage());
        }
    }

    /** On-policy micro-batches (the student's continuations, no training windows) run the live teacher; the cache serves only windows. */
    @Test
    void onPolicyBatchesRunTheTeacher() throws Exception {
        Path data = tokens("train.npy");
        DistillationLoss kd = new DistillationLoss(Divergence.KL, 1f, 0.5f, 0.5f, -100);
        long[] looked = new long[1];
        try (DecoderModel teacher = DecoderModel.load(cpu, GPT2); TokenWindows train = TokenWindows.open(data, T, V);
             DecoderModel student = DecoderModel.fromTeacherLayers(teacher, new int[] {0});
             LmTrainer trainer = LmTrainer.distillation(student, teacher, kd, sgd(2, 5), V).onPolicy(1.0, 3, 1.0)) {
            trainer.teacherSource(m -> {
                looked[0]++;
                throw new AssertionError("an on-policy micro-batch asked the cache for windows " + Arrays.toString(m.windows()));
            });
            trainer.stopAfter(2);
            double loss = trainer.fit(train, null, m -> { }, null).history().getLast().trainLoss();
            assertTrue(Double.isFinite(loss), "loss " + loss);
            assertEquals(0, looked[0]);
        }
    }

    @Test
    void defaultTopK() {
        assertEquals(0, LmTeacherCache.defaultTopK(128));
        assertEquals(0, LmTeacherCache.defaultTopK(4096));
        assertEquals(64, LmTeacherCache.defaultTopK(4097));
        assertEquals(64, LmTeacherCache.defaultTopK(50_257));
    }
}
