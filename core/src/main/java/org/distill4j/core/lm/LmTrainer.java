package org.distill4j.core.lm;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.function.Consumer;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Philox;
import org.distill4j.core.Tensor;
import org.distill4j.core.data.TokenWindows;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.distill4j.core.train.Checkpoints;
import org.distill4j.core.train.TrainingConfig;

/**
 * Trains a decoder on token windows: next-token cross-entropy ({@link #supervised}), or
 * token-level distillation from a frozen decoder teacher ({@link #distillation}), optionally with a
 * hidden-state hint. One optimizer step:
 *
 * <pre>
 *   for each of the step's micro-batches (B windows of T inputs and T targets):
 *       h_t = teacher.forwardHidden(eval)                       [B*T, Dt]  (distillation)
 *       h_s = student.forwardHidden(train)                      [B*T, Ds]
 *       loss += ChunkedLmLoss(h_s, h_t, targets) / N_step        (never a [B*T, V] tensor)
 *       student.backwardHidden(dL/dh_s, hint gradient)
 *   clip; SGD or AdamW; zero the gradients
 * </pre>
 *
 * N_step is the number of counted target tokens of all the step's micro-batches, so accumulation
 * gives the gradient of one big batch. Weight decay applies to parameters of rank >= 2 (matrices
 * and embeddings), not to biases and norm weights, as nanoGPT and transformers' Trainer do. A tied
 * weight is one parameter: updated, clipped and checkpointed once.
 *
 * <p>Both models run on the CPU backend (as {@link DecoderModel} does so far); the teacher's
 * weights are held in float32 (bf16 or fp16 on disk widen exactly).
 */
public final class LmTrainer implements AutoCloseable {
    /** An evaluation (after each epoch, and at the end). valLoss is the mean next-token cross-entropy on the validation windows (NaN: none). */
    public record Metrics(int epoch, long step, double trainLoss, double softLoss, double hardLoss, double hintLoss, double valLoss, double lr,
                          double tokensPerSecond, double seconds) {
        public double valPerplexity() {
            return Math.exp(valLoss);
        }
    }

    public record Result(List<Metrics> history, long steps, double valLoss, double seconds, double tokensPerSecond) {}

    /** After every optimizer step: the step (from 1), the steps planned, that step's loss. */
    @FunctionalInterface
    public interface StepListener {
        void step(long step, long total, double loss);
    }

    private final Backend backend;
    private final DecoderModel student, teacher;
    private final DistillationLoss kd;
    private final TrainingConfig config;
    private final long vocab; // the id range the loss uses (the shared one when distilling)
    private DecoderHint hint;
    private TeacherSource teacherSource; // teacher cache (LmTeacherCache): the teacher's logits looked up, the teacher not run
    private int lossChunk = -1;
    private double onPolicyFraction; // GKD: the share of micro-batches replaced by student continuations
    private int promptLen;
    private double sampleTemperature = 1;
    private long stopAfter = Long.MAX_VALUE;
    private StepListener onStep = (s, t, l) -> { };
    private Consumer<String> onNote = s -> { };

    // Optimizer state, made on the first step: trainable parameters split into decayed (rank >= 2) and not.
    private List<Parameter> decayed, notDecayed;
    private List<Tensor> state1Decayed, state2Decayed, state1Plain, state2Plain;
    private List<Tensor> grads; // every trainable gradient, made with the optimizer state (clipping and zeroing walk it each step)

    private LmTrainer(DecoderModel student, DecoderModel teacher, DistillationLoss kd, TrainingConfig config, long vocab) {
        this.backend = student.backend();
        this.student = student;
        this.teacher = teacher;
        this.kd = kd;
        this.config = config;
        this.vocab = vocab;
        if (teacher != null && teacher.backend() != backend) throw new IllegalArgumentException("teacher and student must be on the same backend");
        DecoderOpChecks.hostOnly("LmTrainer (decoder training and distillation)",
            "its chunked lm_head loss, hint losses and on-policy sampling compute on host memory", backend);
    }

    /** Next-token cross-entropy: the mean over the step's target tokens. */
    public static LmTrainer supervised(DecoderModel model, TrainingConfig config) {
        return new LmTrainer(model, null, null, config, model.config().vocab());
    }

    /**
     * Token-level distillation: per target token alpha T^2 D(p_teacher, p_student) + (1 - alpha)
     * CE(student, target), summed and divided by the step's target tokens. {@code sharedVocab} is
     * the id range both use ({@link #sharedVocabulary}).
     */
    public static LmTrainer distillation(DecoderModel student, DecoderModel teacher, DistillationLoss kd, TrainingConfig config, long sharedVocab) {
        if (kd == null || teacher == null) throw new IllegalArgumentException("distillation needs a teacher and the loss settings");
        if (sharedVocab < 1 || sharedVocab > Math.min(student.config().vocab(), teacher.config().vocab())) {
            throw new IllegalArgumentException("shared vocabulary " + sharedVocab + " exceeds a model's (student " + student.config().vocab() + ", teacher "
                + teacher.config().vocab() + ")");
        }
        return new LmTrainer(student, teacher, kd, config, sharedVocab);
    }

    /**
     * The id range a teacher and a student share. Equal sizes share all. Sizes that differ only by
     * the padding rows checkpoints add to round the embedding up (e.g. Qwen's 151,936 vs 152,064, or
     * GPT-2's 50,257 vs 50,304) share the smaller: the larger must be a multiple of 64, larger by at most
     * 256 rows and by at most an eighth. {@code tokenizerSize} (the ids a tokenizer can produce, or 0 when unknown) must
     * fit in both. Anything else is refused: the two models do not share a tokenizer.
     */
    public static long sharedVocabulary(DecoderConfig teacher, DecoderConfig student, long tokenizerSize) {
        long vt = teacher.vocab(), vs = student.vocab(), lo = Math.min(vt, vs), hi = Math.max(vt, vs);
        if (tokenizerSize > lo) {
            throw new IllegalArgumentException("the tokenizer has " + tokenizerSize + " ids but " + (vt < vs ? "the teacher " + teacher.file() : "the student "
                + student.file()) + " has 'vocab_size' " + lo);
        }
        if (vt == vs) return vt;
        if (hi % 64 != 0 || hi - lo > Math.min(256, hi / 8)) {
            throw new IllegalArgumentException("the teacher's vocabulary (" + vt + ", " + teacher.file() + ") and the student's (" + vs + ", " + student.file()
                + ") differ by more than padding (a padded size is a multiple of 64, larger by at most 256 rows and 1/8): they do not share a tokenizer");
        }
        return lo;
    }

    public LmTrainer hint(DecoderHint.Spec spec) {
        if (spec == null) return this;
        if (teacher == null) throw new IllegalArgumentException("--hint needs a teacher");
        if (teacherSource != null) throw hintWithCache();
        if (hint != null) hint.close();
        hint = new DecoderHint(backend, spec, student, teacher, config.seed());
        return this;
    }

    /** Where a micro-batch's teacher logits come from when the teacher does not run: a cache's rows of the micro-batch's windows. */
    @FunctionalInterface
    public interface TeacherSource {
        ChunkedLmLoss.TeacherRows rows(MicroBatch m);
    }

    private static IllegalArgumentException hintWithCache() {
        return new IllegalArgumentException("--hint needs the teacher's hidden states every step and --teacher-cache keeps only its logits: use one or the other");
    }

    /**
     * Takes the teacher's logits from {@code source} (e.g. an {@link LmTeacherCache}'s rows of the
     * micro-batch's windows) instead of running the teacher, for every micro-batch that holds
     * training windows ({@link MicroBatch#windows} not null); the others (on-policy continuations,
     * batches made by hand) still run the teacher. Not with a hint.
     */
    public LmTrainer teacherSource(TeacherSource source) {
        if (teacher == null) throw new IllegalArgumentException("a teacher cache needs distillation");
        if (hint != null && source != null) throw hintWithCache();
        this.teacherSource = source;
        return this;
    }

    /**
     * On-policy distillation (GKD, Agarwal et al. 2024; TRL's GKDTrainer with lmbda = fraction): each
     * micro-batch is, with probability {@code fraction} (drawn from the seed, so a resumed run draws
     * the same), replaced by the student's own continuations. Each window's first {@code promptLen}
     * tokens are the prompt; the student, in eval mode with a KV cache, samples the remaining
     * T + 1 - promptLen tokens at {@code temperature} (0: greedy) from the shared ids, without
     * stopping at end-of-text; the teacher scores the sequence, and the loss is the divergence
     * alone (alpha = 1) over the generated tokens only.
     */
    public LmTrainer onPolicy(double fraction, int promptLen, double temperature) {
        if (teacher == null) throw new IllegalArgumentException("on-policy distillation needs a teacher");
        if (!(fraction >= 0 && fraction <= 1)) throw new IllegalArgumentException("--on-policy-fraction must be in [0, 1], got " + fraction);
        if (promptLen < 1) throw new IllegalArgumentException("--prompt-len must be >= 1 token, got " + promptLen);
        if (!(temperature >= 0) || Double.isInfinite(temperature)) throw new IllegalArgumentException("--sample-temperature must be >= 0 (0: greedy), got " + temperature);
        this.onPolicyFraction = fraction;
        this.promptLen = promptLen;
        this.sampleTemperature = temperature;
        return this;
    }

    /** Rows of the loss's chunks: > 0 as given, 0 for no chunking (the whole micro-batch's logits at once), < 0 automatic (the default). */
    public LmTrainer lossChunk(int rows) {
        this.lossChunk = rows;
        return this;
    }

    public LmTrainer stopAfter(long steps) {
        if (steps < 1) throw new IllegalArgumentException("max steps must be >= 1, got " + steps);
        this.stopAfter = steps;
        return this;
    }

    public LmTrainer onStep(StepListener listener) {
        this.onStep = listener;
        return this;
    }

    public LmTrainer onNote(Consumer<String> listener) {
        this.onNote = listener;
        return this;
    }

    public long vocabulary() {
        return vocab;
    }

    /** The parameters the optimizer updates: the student's (a tied weight once) and the hint's projection. */
    public List<Parameter> trainable() {
        List<Parameter> all = new ArrayList<>(student.parameters());
        if (hint != null) all.addAll(hint.parameters());
        return Parameter.distinct(all);
    }

    /**
     * One micro-batch: {@code rows} windows, inputs and targets [rows * T] row-major. An on-policy one
     * (student continuations, GKD) is trained on the divergence alone (alpha = 1) over its counted targets.
     * {@code windows} [rows]: the training windows it holds (what a teacher cache looks up), or null
     * when it holds none (an on-policy batch, a batch made by hand).
     */
    public record MicroBatch(long[] inputs, long[] targets, int rows, int t, boolean onPolicy, long[] windows) {
        public MicroBatch {
            if (inputs.length != (long) rows * t || targets.length != (long) rows * t) {
                throw new IllegalArgumentException("micro-batch of " + rows + " x " + t + " with " + inputs.length + " inputs and " + targets.length + " targets");
            }
            if (windows != null && windows.length != rows) throw new IllegalArgumentException("micro-batch of " + rows + " windows with " + windows.length + " window indices");
        }

        public MicroBatch(long[] inputs, long[] targets, int rows, int t) {
            this(inputs, targets, rows, t, false, null);
        }

        public MicroBatch(long[] inputs, long[] targets, int rows, int t, boolean onPolicy) {
            this(inputs, targets, rows, t, onPolicy, null);
        }

        long counted() {
            long c = 0;
            for (long y : targets) if (y != -100) c++;
            return c;
        }
    }

    /** What one optimizer step gave: the loss terms (already normalised by the step's tokens), the hint term, the tokens counted. */
    public record StepTerms(ChunkedLmLoss.Terms terms, double hint, long tokens) {
        public double loss() {
            return terms.total() + hint;
        }
    }

    /**
     * One optimizer step over {@code micro} (accumulated), at learning rate {@code lr}; {@code step}
     * counts from 1 (AdamW's bias correction, SGD's first momentum). Gradients are zero before
     * and after.
     */
    public StepTerms step(List<MicroBatch> micro, long step, float lr, long dropoutStream) {
        long normalizer = 0;
        for (MicroBatch m : micro) normalizer += m.counted();
        if (normalizer == 0) throw new IllegalArgumentException("an optimizer step with no counted target tokens");
        ChunkedLmLoss.Terms terms = ChunkedLmLoss.Terms.ZERO;
        double hintSum = 0;
        for (int i = 0; i < micro.size(); i++) {
            MicroBatch m = micro.get(i);
            double[] h = new double[1];
            terms = terms.plus(forwardBackward(m, normalizer, dropoutStream + i, h));
            if (m.onPolicy()) onPolicyBatches++;
            hintSum += h[0];
        }
        long pt = DecoderProfile.start();
        ensureOptimizerState();
        if (config.clipNorm() > 0) clip();
        DecoderProfile.stop(DecoderProfile.Phase.CLIP, pt);
        pt = DecoderProfile.start();
        update(step, lr);
        DecoderProfile.stop(DecoderProfile.Phase.OPTIMIZER, pt);
        pt = DecoderProfile.start();
        zeroGrad();
        DecoderProfile.stop(DecoderProfile.Phase.ZERO_GRAD, pt);
        return new StepTerms(terms, hintSum, normalizer);
    }

    /** Forward and backward of one micro-batch; gradients accumulate. Returns its loss terms (normalised by {@code normalizer}); hint term in hintOut[0]. */
    private long onPolicyBatches; // micro-batches trained on student continuations so far (for the log)

    private ChunkedLmLoss.Terms forwardBackward(MicroBatch m, long normalizer, long dropoutStream, double[] hintOut) {
        DistillationLoss loss = kd != null && m.onPolicy() ? new DistillationLoss(kd.divergence(), kd.temperature(), 1f, kd.beta(), kd.ignoreIndex()) : kd;
        long n = (long) m.rows() * m.t(), ds = student.config().hidden();
        try (Arena arena = Arena.ofShared()) {
            ChunkedLmLoss.TeacherRows teacherRows = null;
            Tensor teacherTap = null;
            long pt = DecoderProfile.start();
            if (teacherSource != null && m.windows() != null) {
                teacherRows = teacherSource.rows(m); // on-policy batches (no windows) fall through to the live teacher
            } else if (teacher != null) {
                Layer.Pass eval = new Layer.Pass(backend, arena, false, 0, 0);
                DecoderModel.HiddenTap tap = null;
                if (hint != null && hint.spec().teacherIndex() < teacher.config().layers()) {
                    teacherTap = backend.empty(arena, DType.F32, n, teacher.config().hidden());
                    tap = new DecoderModel.HiddenTap(hint.spec().teacherIndex(), teacherTap);
                }
                Tensor ht = teacher.forwardHidden(eval, m.inputs(), m.rows(), m.t(), null, null, null, tap);
                if (hint != null && teacherTap == null) teacherTap = ht; // the final norm's output is what forwardHidden returns
                teacherRows = ChunkedLmLoss.TeacherRows.ofHead(ht, teacher.lmHead(), vocab);
            }
            DecoderProfile.stop(DecoderProfile.Phase.TEACHER_FORWARD, pt);
            pt = DecoderProfile.start();
            Layer.Pass train = new Layer.Pass(backend, arena, true, config.seed(), dropoutStream);
            Tensor studentTap = null;
            DecoderModel.HiddenTap sTap = null;
            if (hint != null && hint.spec().studentIndex() < student.config().layers()) {
                studentTap = backend.empty(arena, DType.F32, n, ds);
                sTap = new DecoderModel.HiddenTap(hint.spec().studentIndex(), studentTap);
            }
            Tensor hs = student.forwardHidden(train, m.inputs(), m.rows(), m.t(), null, null, null, sTap);
            if (hint != null && studentTap == null) studentTap = hs;
            DecoderProfile.stop(DecoderProfile.Phase.STUDENT_FORWARD, pt);
            DecoderModel.HiddenTap extra = null;
            if (hint != null) {
                Tensor dTap = backend.empty(arena, DType.F32, n, ds);
                hintOut[0] = hint.loss(studentTap, teacherTap, m.targets(), normalizer, dTap);
                extra = new DecoderModel.HiddenTap(hint.spec().studentIndex(), dTap);
            }
            Tensor dHidden = backend.empty(arena, DType.F32, n, ds);
            ChunkedLmLoss.Terms terms = ChunkedLmLoss.compute(backend, hs, student.lmHead(), vocab, m.targets(), loss, teacherRows, normalizer,
                ChunkedLmLoss.chunkRows(lossChunk, n, vocab), dHidden);
            pt = DecoderProfile.start();
            student.backwardHidden(dHidden, extra);
            DecoderProfile.stop(DecoderProfile.Phase.STUDENT_BACKWARD, pt);
            return terms;
        }
    }

    /** Philox stream of the on-policy draws: which micro-batches, and the sampled tokens. */
    private static final long ON_POLICY_STREAM = 0x676B64L;

    /**
     * The student's continuations of {@code m}'s prompts: each window's first promptLen inputs, then
     * T + 1 - promptLen tokens sampled one at a time through the KV cache (eval mode). The result's
     * inputs are the first T of those T + 1 tokens and its targets the last T, with the targets
     * that are prompt tokens set to -100.
     */
    MicroBatch studentContinuations(MicroBatch m, long index) {
        int rows = m.rows(), t = m.t(), p = promptLen, generate = t + 1 - p;
        long d = student.config().hidden();
        long[] seq = new long[rows * (t + 1)];
        for (int r = 0; r < rows; r++) System.arraycopy(m.inputs(), r * t, seq, r * (t + 1), p);
        long drawSeed = config.seed() ^ ON_POLICY_STREAM ^ (index * 0x9E3779B97F4A7C15L);
        float[] lastRow = new float[(int) vocab];
        try (DecoderModel.KvCache cache = student.newCache(rows, t)) {
            long[] feed = new long[rows * p];
            for (int r = 0; r < rows; r++) System.arraycopy(seq, r * (t + 1), feed, r * p, p);
            int len = p;
            for (int j = 0; j < generate; j++) {
                try (Arena arena = Arena.ofShared()) {
                    Tensor h = student.forwardHidden(new Layer.Pass(backend, arena, false, 0, 0), feed, rows, len, null, null, cache, null); // [rows * len, D]
                    Tensor last = backend.empty(arena, DType.F32, rows, d), logits = backend.empty(arena, DType.F32, rows, vocab);
                    for (int r = 0; r < rows; r++) {
                        java.lang.foreign.MemorySegment.copy(h.data(), ((long) r * len + len - 1) * d * Float.BYTES, last.data(), r * d * Float.BYTES, d * Float.BYTES);
                    }
                    DecoderOps.projectionForward(logits.data(), 0, vocab, last.data(), d, student.lmHead().value().data(), null, rows, d, vocab, false);
                    long[] next = new long[rows];
                    for (int r = 0; r < rows; r++) {
                        java.lang.foreign.MemorySegment.copy(logits.data(), java.lang.foreign.ValueLayout.JAVA_FLOAT, r * vocab * Float.BYTES, lastRow, 0, (int) vocab);
                        next[r] = TokenSampler.choose(lastRow, (int) vocab, sampleTemperature, 0, drawSeed, (long) r * (t + 1) + p + j);
                        seq[r * (t + 1) + p + j] = next[r];
                    }
                    feed = next;
                    len = 1;
                }
            }
        }
        long[] inputs = new long[rows * t], targets = new long[rows * t];
        for (int r = 0; r < rows; r++) {
            System.arraycopy(seq, r * (t + 1), inputs, r * t, t);
            System.arraycopy(seq, r * (t + 1) + 1, targets, r * t, t);
            for (int i = 0; i < p - 1; i++) targets[r * t + i] = -100; // these predict prompt tokens: not the student's
        }
        return new MicroBatch(inputs, targets, rows, t, true);
    }

    private void ensureOptimizerState() {
        if (decayed != null) return;
        decayed = new ArrayList<>();
        notDecayed = new ArrayList<>();
        for (Parameter p : trainable()) (p.value().rank() >= 2 ? decayed : notDecayed).add(p);
        grads = java.util.stream.Stream.concat(decayed.stream(), notDecayed.stream()).map(Parameter::grad).toList();
        state1Decayed = zerosLike(decayed);
        state1Plain = zerosLike(notDecayed);
        boolean adam = config.optimizer() == TrainingConfig.Optimizer.ADAMW;
        state2Decayed = adam ? zerosLike(decayed) : List.of();
        state2Plain = adam ? zerosLike(notDecayed) : List.of();
    }

    private List<Tensor> zerosLike(List<Parameter> ps) {
        List<Tensor> out = new ArrayList<>();
        for (Parameter p : ps) out.add(backend.zeros(DType.F32, p.value().shape()));
        return out;
    }

    private void update(long step, float lr) {
        ensureOptimizerState();
        group(decayed, state1Decayed, state2Decayed, step, lr, config.weightDecay());
        group(notDecayed, state1Plain, state2Plain, step, lr, 0f);
    }

    private void group(List<Parameter> ps, List<Tensor> s1, List<Tensor> s2, long step, float lr, float weightDecay) {
        if (ps.isEmpty()) return;
        List<Tensor> values = ps.stream().map(Parameter::value).toList(), grads = ps.stream().map(Parameter::grad).toList();
        if (config.optimizer() == TrainingConfig.Optimizer.SGD) {
            backend.sgdStep(new Optimizers.Sgd(lr, config.momentum(), 0f, config.nesterov(), weightDecay), step, values, grads, s1);
        } else {
            backend.adamwStep(new Optimizers.AdamW(lr, 0.9f, 0.999f, 1e-8f, weightDecay), step, values, grads, s1, s2);
        }
    }

    /** Scales all gradients so that their global L2 norm is at most clipNorm. */
    private void clip() {
        org.distill4j.core.train.Trainer.clipGlobalNorm(backend, grads, config.clipNorm());
    }

    private void zeroGrad() {
        for (Tensor g : grads) backend.zero(g);
    }

    /**
     * Trains for the configured epochs (or until {@link #stopAfter}); {@code onEpoch} sees every
     * evaluation. {@code validation} may be null. Windows are shuffled each epoch with the seed; a
     * last short micro-batch is kept (it counts its own tokens).
     */
    public Result fit(TokenWindows train, TokenWindows validation, Consumer<Metrics> onEpoch, Checkpoints checkpoints) throws IOException {
        int batch = config.batchSize(), acc = config.accumulation(), t = train.seqLen();
        if (validation != null && validation.seqLen() != t) throw new IllegalArgumentException("validation windows of " + validation.seqLen() + " tokens, training " + t);
        long perEpoch = train.batchesPerEpoch(batch, false);
        if (perEpoch == 0) {
            throw new IllegalArgumentException(train.file().path() + ": " + train.tokens() + " tokens make no window of " + (t + 1) + " (--seq-len " + t + " + 1)");
        }
        long groupsPerEpoch = (perEpoch + acc - 1) / acc;
        long total = Math.min(groupsPerEpoch * config.epochs(), stopAfter);
        long step = 0, micro = 0;
        int firstEpoch = 0;
        long firstBatch = 0;
        ensureOptimizerState();
        if (checkpoints != null && checkpoints.resume()) {
            var latest = checkpoints.latest();
            if (latest.isPresent()) {
                long[] pos = restore(latest.get());
                firstEpoch = (int) pos[0];
                firstBatch = pos[1];
                step = pos[2];
                micro = pos[3];
                onNote.accept("resumed from " + latest.get() + " at step " + step);
            }
        }
        if (hint != null) onNote.accept(hint.describe());
        if (onPolicyFraction > 0) {
            if (promptLen > t) throw new IllegalArgumentException("--prompt-len " + promptLen + " is longer than the window, --seq-len " + t);
            onNote.accept(String.format(Locale.ROOT, "on-policy: %.0f%% of the micro-batches are student continuations of each window's first %d tokens "
                + "(%d sampled at temperature %s), trained on %s alone over the sampled tokens", 100 * onPolicyFraction, promptLen, t + 1 - promptLen,
                sampleTemperature, kd.divergence().cliName()));
        }
        List<Metrics> history = new ArrayList<>();
        long t0 = System.nanoTime(), tokensSeen = 0;
        double lastVal = Double.NaN;
        long[] inputs = new long[batch * t], targets = new long[batch * t];
        long posEpoch = firstEpoch, posBatch = firstBatch;
        for (int epoch = firstEpoch; epoch < config.epochs() && step < total; epoch++) {
            long[] order = train.order(epoch, config.seed(), true);
            double lossSum = 0, softSum = 0, hardSum = 0, hintSum = 0;
            long stepsThisEpoch = 0;
            float lr = 0;
            for (long b = epoch == firstEpoch ? firstBatch : 0; b < perEpoch && step < total; b += acc) {
                List<MicroBatch> group = new ArrayList<>();
                for (long k = b; k < Math.min(perEpoch, b + acc); k++) {
                    int rows = train.batch(order, k, batch, inputs, targets);
                    MicroBatch mb = new MicroBatch(java.util.Arrays.copyOf(inputs, rows * t), java.util.Arrays.copyOf(targets, rows * t), rows, t, false,
                        java.util.Arrays.copyOfRange(order, (int) (k * batch), (int) (k * batch) + rows));
                    long index = micro + group.size(); // this micro-batch's number in the run: its draws
                    if (onPolicyFraction > 0 && Philox.uniform(config.seed() ^ ON_POLICY_STREAM, index) < onPolicyFraction) {
                        mb = studentContinuations(mb, index);
                    }
                    group.add(mb);
                }
                lr = config.lrAt(step, total);
                StepTerms r = step(group, step + 1, lr, micro);
                micro += group.size();
                step++;
                stepsThisEpoch++;
                tokensSeen += r.tokens();
                double loss = r.loss();
                if (!Double.isFinite(loss)) {
                    throw new IllegalStateException(String.format(Locale.ROOT, "the loss is %s at step %d (epoch %d); lower the learning rate or clip (--clip-norm)%s",
                        loss, step, epoch + 1, lastCheckpoint(checkpoints)));
                }
                lossSum += loss;
                softSum += r.terms().soft();
                hardSum += r.terms().hard();
                hintSum += r.hint();
                onStep.step(step, total, loss);
                long next = b + acc;
                posEpoch = next < perEpoch ? epoch : epoch + 1; // where a resumed run goes on
                posBatch = next < perEpoch ? next : 0;
                if (checkpoints != null && step % checkpoints.everySteps() == 0) save(checkpoints, posEpoch, posBatch, step, micro);
            }
            if (stepsThisEpoch == 0) continue;
            boolean last = epoch + 1 == config.epochs() || step >= total;
            if (validation != null && (last || (epoch + 1) % config.evalEvery() == 0)) lastVal = evaluate(validation, batch);
            double seconds = (System.nanoTime() - t0) / 1e9;
            Metrics m = new Metrics(epoch + 1, step, lossSum / stepsThisEpoch, kd == null ? Double.NaN : softSum / stepsThisEpoch,
                kd == null ? Double.NaN : hardSum / stepsThisEpoch, hint == null ? Double.NaN : hintSum / stepsThisEpoch, lastVal, lr, tokensSeen / seconds, seconds);
            history.add(m);
            onEpoch.accept(m);
        }
        if (checkpoints != null && !history.isEmpty()) save(checkpoints, posEpoch, posBatch, step, micro);
        if (onPolicyFraction > 0) onNote.accept("on-policy: " + onPolicyBatches + " of " + micro + " micro-batches were student continuations");
        double seconds = (System.nanoTime() - t0) / 1e9;
        return new Result(history, step, lastVal, seconds, tokensSeen / Math.max(seconds, 1e-9));
    }

    /** The student's mean next-token cross-entropy over every window of {@code data} (eval mode, {@code batch} windows a forward). */
    public double evaluate(TokenWindows data, int batch) {
        return evaluate(student, data, batch, lossChunk);
    }

    /** A decoder's mean next-token cross-entropy over every target token of {@code data}, in eval mode, through the chunked loss. */
    public static double evaluate(DecoderModel model, TokenWindows data, int batch, int lossChunk) {
        int t = data.seqLen();
        long batches = data.batchesPerEpoch(batch, false), total = data.windows() * t;
        if (total == 0) throw new IllegalArgumentException(data.file().path() + ": no window of " + (t + 1) + " tokens to evaluate");
        long[] order = data.order(0, 0, false), inputs = new long[batch * t], targets = new long[batch * t];
        double sum = 0;
        Backend backend = model.backend();
        for (long b = 0; b < batches; b++) {
            int rows = data.batch(order, b, batch, inputs, targets);
            int n = rows * t;
            try (Arena arena = Arena.ofShared()) {
                Tensor h = model.forwardHidden(new Layer.Pass(backend, arena, false, 0, 0), java.util.Arrays.copyOf(inputs, n), rows, t, null, null, null, null);
                sum += ChunkedLmLoss.compute(backend, h, model.lmHead(), model.config().vocab(), java.util.Arrays.copyOf(targets, n), null, null, total,
                    ChunkedLmLoss.chunkRows(lossChunk, n, model.config().vocab()), null).total();
            }
        }
        return sum;
    }

    private static String lastCheckpoint(Checkpoints c) {
        try {
            return c == null ? "" : c.latest().map(p -> "; the last good checkpoint is " + p).orElse("; no checkpoint was written yet");
        } catch (IOException e) {
            return "";
        }
    }

    /** A checkpoint: the student's tensors (HF names under "model."), the hint's projection, the optimizer state, and where to go on from. */
    private void save(Checkpoints c, long epoch, long batch, long step, long micro) throws IOException {
        Files.createDirectories(c.dir());
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Parameter p : Parameter.distinct(student.parameters())) tensors.put("model." + p.name(), p.value());
        if (hint != null) for (Parameter p : hint.parameters()) tensors.put(p.name(), p.value());
        putState(tensors, decayed, state1Decayed, state2Decayed);
        putState(tensors, notDecayed, state1Plain, state2Plain);
        Safetensors.write(c.file(step), tensors, Map.of("epoch", Long.toString(epoch), "batch", Long.toString(batch), "step", Long.toString(step), "micro",
            Long.toString(micro), "seed", Long.toString(config.seed()), "optimizer", config.optimizer().name(), "kind", "decoder"));
        c.prune();
    }

    private static void putState(Map<String, Tensor> tensors, List<Parameter> ps, List<Tensor> s1, List<Tensor> s2) {
        for (int i = 0; i < ps.size(); i++) {
            tensors.put("optim.state1." + ps.get(i).name(), s1.get(i));
            if (!s2.isEmpty()) tensors.put("optim.state2." + ps.get(i).name(), s2.get(i));
        }
    }

    /** Loads a checkpoint into the student, hint and optimizer; returns [epoch, batch, step, micro]. */
    private long[] restore(Path file) throws IOException {
        try (Safetensors st = Safetensors.open(file)) {
            Map<String, String> meta = st.metadata();
            for (String k : List.of("epoch", "batch", "step", "micro", "seed", "optimizer")) {
                if (!meta.containsKey(k)) throw new IllegalArgumentException(file + ": not a Distill4J checkpoint (metadata '" + k + "' is missing)");
            }
            if (!"decoder".equals(meta.get("kind"))) throw new IllegalArgumentException(file + ": not a decoder checkpoint (metadata 'kind' is " + meta.get("kind") + ")");
            if (Long.parseLong(meta.get("seed")) != config.seed() || !meta.get("optimizer").equals(config.optimizer().name())) {
                throw new IllegalArgumentException(file + ": was written with seed " + meta.get("seed") + " and " + meta.get("optimizer") + "; this run uses seed "
                    + config.seed() + " and " + config.optimizer());
            }
            for (Parameter p : Parameter.distinct(student.parameters())) copy(st, file, "model." + p.name(), p.value());
            if (hint != null) for (Parameter p : hint.parameters()) copy(st, file, p.name(), p.value());
            for (int i = 0; i < decayed.size(); i++) restoreState(st, file, decayed.get(i), state1Decayed.get(i), state2Decayed.isEmpty() ? null : state2Decayed.get(i));
            for (int i = 0; i < notDecayed.size(); i++) restoreState(st, file, notDecayed.get(i), state1Plain.get(i), state2Plain.isEmpty() ? null : state2Plain.get(i));
            return new long[] {Long.parseLong(meta.get("epoch")), Long.parseLong(meta.get("batch")), Long.parseLong(meta.get("step")), Long.parseLong(meta.get("micro"))};
        }
    }

    private static void restoreState(Safetensors st, Path file, Parameter p, Tensor s1, Tensor s2) {
        copy(st, file, "optim.state1." + p.name(), s1);
        if (s2 != null) copy(st, file, "optim.state2." + p.name(), s2);
    }

    private static void copy(Safetensors st, Path file, String name, Tensor into) {
        if (!st.entries().containsKey(name)) {
            throw new IllegalArgumentException(file + ": has no tensor '" + name + "' (it was written for another model or other options: --hint, the optimizer)");
        }
        st.copyInto(name, into);
    }

    @Override
    public void close() {
        for (List<Tensor> l : java.util.Arrays.asList(state1Decayed, state2Decayed, state1Plain, state2Plain)) if (l != null) l.forEach(Tensor::close);
        if (hint != null) hint.close();
    }
}
