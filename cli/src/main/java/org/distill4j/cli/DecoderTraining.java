package org.distill4j.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.distill4j.core.Backend;
import org.distill4j.core.data.DataSpec;
import org.distill4j.core.data.TextTokens;
import org.distill4j.core.data.TokenWindows;
import org.distill4j.core.lm.DecoderConfig;
import org.distill4j.core.lm.DecoderHint;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.lm.HfCheckpoint;
import org.distill4j.core.lm.LmTrainer;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.tok.HfTokenizer;
import org.distill4j.core.tok.Tokenizer;
import org.distill4j.core.lm.LmTeacherCache;
import org.distill4j.core.train.Checkpoints;
import org.distill4j.core.train.TeacherCache;
import org.distill4j.core.train.TrainingConfig;

/**
 * {@code distill train} and {@code distill distill} when the models are Hugging Face decoder
 * folders: token windows in, a Hugging Face folder out (config.json, model.safetensors, the
 * tokenizer files), with metrics.jsonl and checkpoints/ beside them. Everything is checked before
 * the first step: contexts against --seq-len, token ids against the vocabulary, the tokenizer
 * against the models, the teacher's vocabulary against the student's.
 */
final class DecoderTraining {
    /** Files a tokenizer folder may hold, copied into the output so that it loads with AutoTokenizer. */
    private static final List<String> TOKENIZER_FILES = List.of("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
        "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json");

    /**
     * The distillation settings of {@code distill distill} for decoders; {@code cache} the teacher
     * cache's storage and dtype (null: none), {@code cacheTopK} its k (null: the default for the shared vocabulary).
     */
    record Distill(Path teacher, Path student, String studentInit, DistillationLoss kd, DecoderHint.Spec hint, OnPolicy onPolicy, TeacherCache.Options cache,
                   Integer cacheTopK, DecoderDtype teacherDtype) {
        Distill(Path teacher, Path student, String studentInit, DistillationLoss kd, DecoderHint.Spec hint, OnPolicy onPolicy) {
            this(teacher, student, studentInit, kd, hint, onPolicy, null, null, DecoderDtype.STORED);
        }
    }

    /** GKD's settings: --on-policy-fraction, --prompt-len (null: half the window), --sample-temperature. */
    record OnPolicy(float fraction, Integer promptLen, float temperature) {}

    private DecoderTraining() {}

    static void train(TrainingOptions o, Path modelDir, PrintWriter console) throws IOException {
        TrainingConfig cfg = o.decoderConfig();
        DecoderConfig config = DecoderConfig.read(modelDir);
        checkContext(config, o.seqLen, "the model");
        try (Tokenizer tok = openTokenizer(o.tokenizer, modelDir); Backend b = o.backend()) {
            long vocab = config.vocab();
            checkTokenizer(tok, vocab, config);
            try (TokenWindows train = open(o.data, tok, o.seqLen, vocab, "--data"); TokenWindows val = o.testData == null ? null
                : open(o.testData, tok, o.seqLen, vocab, "--test-data"); DecoderModel model = studentModel(b, modelDir, cfg.seed(), console)) {
                try (LmTrainer trainer = LmTrainer.supervised(model, cfg)) {
                    run(o, trainer, model, train, val, tok, modelDir, console, false);
                }
            }
        }
    }

    static void distill(TrainingOptions o, Distill d, PrintWriter console) throws IOException {
        TrainingConfig cfg = o.decoderConfig();
        DecoderConfig teacherConfig = DecoderConfig.read(d.teacher());
        checkContext(teacherConfig, o.seqLen, "the teacher");
        int[] keep = d.studentInit() == null ? null : teacherLayers(d.studentInit());
        if (keep == null && d.student() == null) throw new IllegalArgumentException("--student DIR is required (or --student-init teacher-layers:0,2,...)");
        if (keep != null && d.student() != null) {
            throw new IllegalArgumentException("--student-init teacher-layers builds the student from the teacher; leave out --student " + d.student());
        }
        DecoderConfig studentConfig = keep != null ? teacherConfig.withLayers(keep) : DecoderConfig.read(d.student());
        if (keep == null) checkContext(studentConfig, o.seqLen, "the student");
        if (!HfCheckpoint.hasWeights(d.teacher())) throw new IllegalArgumentException(d.teacher() + ": the teacher has no model.safetensors (or shard index): nothing to distil from");
        if (keep == null) checkSameTokenizer(d.teacher(), d.student());
        Path tokSource = o.tokenizer != null ? o.tokenizer : d.teacher();
        try (Tokenizer tok = openTokenizer(o.tokenizer, tokSource); Backend b = o.backend()) {
            long shared = LmTrainer.sharedVocabulary(teacherConfig, studentConfig, tok == null ? 0 : tok.vocabSize());
            if (shared < teacherConfig.vocab() || shared < studentConfig.vocab()) {
                console.printf(Locale.ROOT, "vocabularies differ by padding rows only (teacher %d, student %d): the loss uses the shared ids [0, %d)%n", teacherConfig.vocab(),
                    studentConfig.vocab(), shared);
            }
            checkTokenizer(tok, shared, studentConfig);
            TeacherCache.Options cacheOptions = null;
            if (d.cache() != null) {
                int k = d.cacheTopK() == null ? LmTeacherCache.defaultTopK(shared) : d.cacheTopK();
                if (k > shared) throw new IllegalArgumentException("--teacher-cache-topk " + k + ": the models share " + shared + " ids (top-k keeps at most all of them)");
                if (k > 0 && k < shared) d.kd().requireTopKTeacherSupport(d.cacheTopK() == null ? "--teacher-cache (top-" + k + " by default above "
                    + LmTeacherCache.TOPK_DEFAULT_ABOVE + " classes; --teacher-cache-topk 0 keeps every class)" : "--teacher-cache-topk " + k);
                cacheOptions = new TeacherCache.Options(d.cache().storage(), d.cache().dtype(), d.cache().file(), k == shared ? 0 : k);
            }
            String teacherDisk = DecoderModel.summary(d.teacher()).diskDtype();
            try (TokenWindows train = open(o.data, tok, o.seqLen, shared, "--data"); TokenWindows val = o.testData == null ? null
                : open(o.testData, tok, o.seqLen, shared, "--test-data");
                 DecoderModel teacher = DecoderModel.load(b, d.teacher(), d.teacherDtype().resolve(teacherDisk, b))) {
                DecoderModel student;
                if (keep != null) {
                    student = DecoderModel.fromTeacherLayers(teacher, keep);
                    console.printf("student: the teacher's layers %s (of %d), with its embeddings, final norm and lm_head%n", Arrays.toString(keep),
                        teacherConfig.layers());
                } else {
                    student = studentModel(b, d.student(), cfg.seed(), console);
                }
                TeacherCache.Options cacheAt = cacheOptions;
                try (DecoderModel s = student; LmTrainer trainer = LmTrainer.distillation(s, teacher, d.kd(), cfg, shared).hint(d.hint());
                     LmTeacherCache c = cacheAt == null ? null : LmTeacherCache.build(teacher, train, shared, cacheAt, o.batch)) {
                    if (d.onPolicy() != null) {
                        int p = d.onPolicy().promptLen() == null ? Math.max(1, o.seqLen / 2) : d.onPolicy().promptLen();
                        trainer.onPolicy(d.onPolicy().fraction(), p, d.onPolicy().temperature());
                    }
                    if (c != null) {
                        console.println(c.describe(d.cacheTopK() == null));
                        // Micro-batches of training windows look their rows up; on-policy ones (student continuations) still run the teacher.
                        trainer.teacherSource(m -> c.rows(m.windows(), m.t()));
                    }
                    console.printf(Locale.ROOT, "teacher %s (%s, %d layers, %,d parameters, %s on disk, run in %s), student %s (%d layers, %,d parameters); "
                        + "%s, T %s, alpha %s%s%n", d.teacher(), teacherConfig.family().modelType(), teacherConfig.layers(), teacher.parameterCount(), teacher.diskDtype(),
                        d.teacherDtype().describe("--teacher-dtype", teacherDisk, b), d.student() == null ? "(teacher layers)" : d.student(), studentConfig.layers(), s.parameterCount(), d.kd().divergence().cliName(),
                        d.kd().temperature(), d.kd().alpha(), d.kd().divergence() == org.distill4j.core.loss.Divergence.JSD ? ", beta " + d.kd().beta() : "");
                    run(o, trainer, s, train, val, tok, tokSource, console, true);
                }
            }
        }
    }

    /** teacher-layers:0,2,4 -> {0, 2, 4}. */
    static int[] teacherLayers(String spec) {
        String prefix = "teacher-layers:";
        if (!spec.startsWith(prefix) || spec.length() == prefix.length()) {
            throw new IllegalArgumentException("--student-init must be teacher-layers:I,J,... (0-based teacher layer indices), got '" + spec + "'");
        }
        try {
            return Arrays.stream(spec.substring(prefix.length()).split(",")).map(String::trim).mapToInt(Integer::parseInt).toArray();
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--student-init must be teacher-layers:I,J,... with integer layer indices, got '" + spec + "'");
        }
    }

    private static void checkContext(DecoderConfig c, int seqLen, String who) {
        if (seqLen > c.maxPositions()) {
            throw new IllegalArgumentException("--seq-len " + seqLen + " is longer than the context of " + who + ", " + c.file() + " ('"
                + (c.rope() == null ? "n_positions" : "max_position_embeddings") + "' = " + c.maxPositions() + ")");
        }
    }

    /** Two model folders that both carry tokenizer.json must carry the same one. */
    private static void checkSameTokenizer(Path teacher, Path student) throws IOException {
        Path a = teacher.resolve("tokenizer.json"), b = student.resolve("tokenizer.json");
        if (Files.isRegularFile(a) && Files.isRegularFile(b) && Files.mismatch(a, b) != -1) {
            throw new IllegalArgumentException(a + " and " + b + " differ: the teacher and the student do not share a tokenizer");
        }
    }

    /** --tokenizer, else a tokenizer.json in {@code fallbackDir} (the model's folder), else none. */
    private static Tokenizer openTokenizer(Path explicit, Path fallbackDir) throws IOException {
        if (explicit != null) return HfTokenizer.open(explicit);
        if (fallbackDir != null && Files.isRegularFile(fallbackDir.resolve("tokenizer.json"))) return HfTokenizer.open(fallbackDir);
        return null;
    }

    private static void checkTokenizer(Tokenizer tok, long vocab, DecoderConfig config) {
        if (tok != null && tok.vocabSize() > vocab) {
            throw new IllegalArgumentException("the tokenizer " + tok.source() + " has " + tok.vocabSize() + " ids but " + config.file() + " has 'vocab_size' "
                + config.vocab() + (vocab < config.vocab() ? " (shared with the teacher: " + vocab + ")" : "") + ": it is not this model's tokenizer");
        }
    }

    private static TokenWindows open(String spec, Tokenizer tok, int seqLen, long vocab, String option) throws IOException {
        if (spec.startsWith("text:")) {
            if (tok == null) throw new IllegalArgumentException(option + " " + spec + ": text data needs --tokenizer DIR|tokenizer.json (or a tokenizer.json in the model folder)");
            return TextTokens.open(spec, tok, seqLen, Math.toIntExact(vocab));
        }
        if (!DataSpec.isTokens(spec)) {
            throw new IllegalArgumentException(option + " " + spec + ": a decoder trains on tokens:FILE (llm.c .bin or 1-D .npy) or text:FILES with --tokenizer");
        }
        return DataSpec.openTokens(spec, seqLen, Math.toIntExact(vocab));
    }

    /** The folder's weights, or a fresh initialisation from its config.json when it has none. */
    private static DecoderModel studentModel(Backend b, Path dir, long seed, PrintWriter console) throws IOException {
        if (HfCheckpoint.hasWeights(dir)) return DecoderModel.load(b, dir);
        console.printf("%s has config.json but no weights: a new model, initialised as transformers does, seed %d%n", dir, seed);
        return DecoderModel.fromConfig(b, dir, seed);
    }

    private static void run(TrainingOptions o, LmTrainer trainer, DecoderModel model, TokenWindows train, TokenWindows val, Tokenizer tok, Path tokenizerDir,
                            PrintWriter console, boolean distill) throws IOException {
        Files.createDirectories(o.out);
        ObjectMapper json = new ObjectMapper();
        Path metrics = o.out.resolve("metrics.jsonl");
        if (o.maxSteps != null) trainer.stopAfter(o.maxSteps);
        trainer.lossChunk(o.lossChunk);
        ProgressLine bar = ProgressLine.forTerminal(console);
        long tokensPerStep = (long) o.batch * o.accumulation * train.seqLen();
        long t0 = System.nanoTime();
        trainer.onNote(note -> {
            bar.clear();
            console.println(note);
            console.flush();
        }).onStep((step, total, loss) -> {
            double s = (System.nanoTime() - t0) / 1e9;
            bar.show(String.format(Locale.ROOT, "step %d/%d %s  loss %.4f  %,.0f tokens/s", step, total, ProgressLine.bar(step, total, 24), loss,
                step * tokensPerStep / Math.max(s, 1e-9)), step == total);
        });
        console.printf(Locale.ROOT, "data: %,d windows of %d tokens (%,d tokens) from %s%s; %d windows a micro-batch, %d micro-batches a step%n", train.windows(),
            train.seqLen(), train.tokens(), train.file().path(), val == null ? "" : String.format(Locale.ROOT, "; validation %,d windows", val.windows()), o.batch,
            o.accumulation);
        console.flush();
        LmTrainer.Result r;
        try (BufferedWriter w = Files.newBufferedWriter(metrics, StandardOpenOption.CREATE, o.resume ? StandardOpenOption.APPEND
            : StandardOpenOption.TRUNCATE_EXISTING)) {
            r = trainer.fit(train, val, m -> {
                bar.clear();
                StringBuilder terms = new StringBuilder();
                if (!Double.isNaN(m.softLoss())) terms.append(String.format(Locale.ROOT, " (soft %.4f, hard %.4f%s)", m.softLoss(), m.hardLoss(),
                    Double.isNaN(m.hintLoss()) ? "" : String.format(Locale.ROOT, ", hint %.4f", m.hintLoss())));
                console.printf(Locale.ROOT, "epoch %d  step %d  train loss %.4f%s%s  lr %.2e  %,.0f tokens/s  %.1f s%n", m.epoch(), m.step(), m.trainLoss(), terms,
                    Double.isNaN(m.valLoss()) ? "" : String.format(Locale.ROOT, "  val loss %.4f  val perplexity %.2f", m.valLoss(), m.valPerplexity()), m.lr(),
                    m.tokensPerSecond(), m.seconds());
                console.flush();
                Map<String, Object> row = TrainingOptions.metricsRow(m.epoch(), m.step(), m.trainLoss(), m.softLoss(), m.hardLoss(), m.hintLoss());
                if (!Double.isNaN(m.valLoss())) {
                    row.put("val_loss", m.valLoss());
                    row.put("val_perplexity", m.valPerplexity());
                }
                row.put("lr", m.lr());
                row.put("tokens_per_s", m.tokensPerSecond());
                row.put("seconds", m.seconds());
                TrainingOptions.appendRow(w, json, row);
            }, new Checkpoints(o.out.resolve("checkpoints"), o.checkpointEvery, o.keep, o.resume));
        }
        // The weights were trained in float32: written as float32 (rounding a bf16 folder's student back to bf16 would drop what it learnt below bf16's precision).
        model.save(o.out, org.distill4j.core.DType.F32);
        int copied = copyTokenizer(o.tokenizer != null ? o.tokenizer : tokenizerDir, o.out);
        console.printf(Locale.ROOT, "done: %d steps%s, %.1f s, %,.0f tokens/s; %s in %s (config.json, model.safetensors%s), metrics in %s%n", r.steps(),
            Double.isNaN(r.valLoss()) ? "" : String.format(Locale.ROOT, ", val loss %.4f, val perplexity %.2f", r.valLoss(), Math.exp(r.valLoss())), r.seconds(),
            r.tokensPerSecond(), distill ? "student" : "model", o.out, copied > 0 ? ", tokenizer" : "", metrics);
        if (tok == null && copied == 0) console.println("(no tokenizer was given or found beside the model: pass --tokenizer DIR to have it copied into " + o.out + ")");
    }

    /** Copies the tokenizer files of {@code source} (a folder, or a tokenizer.json) into {@code out}; returns how many. */
    private static int copyTokenizer(Path source, Path out) throws IOException {
        if (source == null) return 0;
        int n = 0;
        if (Files.isRegularFile(source)) {
            Files.copy(source, out.resolve("tokenizer.json"), StandardCopyOption.REPLACE_EXISTING);
            return 1;
        }
        for (String f : TOKENIZER_FILES) {
            Path p = source.resolve(f);
            if (Files.isRegularFile(p) && !p.toAbsolutePath().normalize().equals(out.resolve(f).toAbsolutePath().normalize())) {
                Files.copy(p, out.resolve(f), StandardCopyOption.REPLACE_EXISTING);
                n++;
            }
        }
        return n;
    }
}
