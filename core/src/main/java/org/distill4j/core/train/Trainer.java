package org.distill4j.core.train;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.HostStaging;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Reduction;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.cpu.CpuEngine;
import org.distill4j.core.data.DataLoader;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.HintAdapter;
import org.distill4j.core.nn.InferencePlan;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.Parameter;

/**
 * Trains a model with cross-entropy ({@link #supervised}) or distils it from a frozen teacher
 * ({@link #distillation}: the teacher runs in eval mode, forward only, keeping nothing; the student
 * learns from the fused distillation loss). One optimizer step: for each of {@code accumulation}
 * micro-batches, teacher forward, student forward, loss and dL/dlogits in one call (in place over
 * the logits, normalised by the rows of the whole group), student backward; then optional
 * clipping by global norm and one fused optimizer update. The loss is read back every
 * {@code logEvery} steps; nothing else synchronises (except clipping, which needs the norm).
 *
 * <p>Checkpoints hold the student's state_dict, the optimizer state and the position (epoch,
 * micro-batch, step); dropout masks and the data order are functions of (seed, step) and (seed,
 * epoch), so a resumed run continues bit-for-bit on the CPU.
 */
public final class Trainer {
    /**
     * What one evaluation point reports. {@code trainLoss} is the last optimizer step's whole
     * objective (distillation or cross-entropy, plus the hint term); for distillation
     * {@code softLoss} and {@code hardLoss} are its two terms, alpha T^2 D(p_t, p_s) and
     * (1 - alpha) CE (NaN for supervised training); {@code hintLoss} the hint term alone (NaN
     * without a hint); {@code skippedSteps} counts steps dropped for a
     * non-finite loss or gradient (with {@link #skipNonFinite}).
     */
    public record Metrics(int epoch, long step, double trainLoss, double softLoss, double hardLoss, double hintLoss, double testLoss, double testAccuracy,
                          float lr,
                          double samplesPerSecond, double seconds, long skippedSteps) {}

    /** Progress after an optimizer step (for progress bars); {@code loss} is the last value read back (NaN before the first). */
    public record Progress(int epoch, int epochs, long stepInEpoch, long stepsPerEpoch, long step, long totalSteps, double loss, double samplesPerSecond,
                           double seconds) {}

    /** The end of a run; {@code graphed} says whether steps were replayed from a captured graph, and why not when they were not. */
    public record Result(double testAccuracy, double testLoss, long steps, double seconds, double samplesPerSecond, List<Metrics> history,
                         long skippedSteps, String graphed) {}

    /** Step graphs: ON captures the step once and replays it (an error when unsafe), OFF never, AUTO when safe and on a GPU. */
    public enum GraphMode {
        AUTO, ON, OFF;

        /** "auto", "on" or "off" (the CLI's --graph). */
        public static GraphMode parse(String text) {
            return switch (text.toLowerCase(Locale.ROOT)) {
                case "auto" -> AUTO;
                case "on" -> ON;
                case "off" -> OFF;
                default -> throw new IllegalArgumentException("--graph must be auto, on or off, got '" + text + "'");
            };
        }
    }

    private final Backend backend;
    private final Model student;
    private final List<Model> teachers;
    private final DistillationLoss kd;
    private final TrainingConfig config;
    private long stopAfterSteps = Long.MAX_VALUE;
    private Consumer<Progress> onStep = p -> { };
    private FeatureHint hint;
    private TeacherCache.Options cacheOptions;
    private boolean skipNonFinite;
    private GraphMode graphMode = GraphMode.AUTO;
    private Consumer<String> onNote = s -> { };
    /** What the frozen teachers' matrix products and convolutions run in: F32, or BF16 (bf16 weights and inputs, float32 sums). */
    private DType teacherDtype = DType.F32;

    private Trainer(Backend backend, Model student, List<Model> teachers, DistillationLoss kd, TrainingConfig config) {
        this.backend = backend;
        this.student = student;
        this.teachers = teachers;
        this.kd = kd;
        this.config = config;
    }

    public static Trainer supervised(Backend backend, Model model, TrainingConfig config) {
        return new Trainer(backend, model, List.of(), null, config);
    }

    public static Trainer distillation(Backend backend, Model student, Model teacher, DistillationLoss loss, TrainingConfig config) {
        return distillation(backend, student, List.of(teacher), loss, config);
    }

    /**
     * Distillation from several frozen teachers: their softened distributions (at the loss's
     * temperature) are averaged, and the student learns from the average.
     */
    public static Trainer distillation(Backend backend, Model student, List<Model> teachers, DistillationLoss loss, TrainingConfig config) {
        if (teachers.isEmpty()) throw new IllegalArgumentException("distillation needs at least one teacher");
        for (Model teacher : teachers) {
            long[] s = student.outputShape(), t = teacher.outputShape();
            if (!Arrays.equals(s, t)) {
                throw new IllegalArgumentException("teacher " + teacher.spec().source() + " outputs " + Arrays.toString(t) + " but the student outputs "
                    + Arrays.toString(s) + ": the class counts must match");
            }
            if (!Arrays.equals(student.inputShape(), teacher.inputShape())) {
                throw new IllegalArgumentException("teacher " + teacher.spec().source() + " takes " + Arrays.toString(teacher.inputShape())
                    + " but the student takes " + Arrays.toString(student.inputShape()));
            }
        }
        return new Trainer(backend, student, List.copyOf(teachers), loss, config);
    }

    /**
     * Adds feature (hint) distillation between a student layer and a layer of the first teacher;
     * checks the layer indices and that an adapter can map one shape to the other.
     */
    public Trainer withHint(FeatureHint hint) {
        if (teachers.isEmpty()) throw new IllegalArgumentException("a feature hint needs a teacher (distillation, not supervised training)");
        if (cacheOptions != null) throw new IllegalArgumentException(CACHE_WITH_HINT);
        if (teacherDtype == DType.BF16) throw new IllegalArgumentException(BF16_WITH_HINT);
        // layerOutputShape checks the indices ("model s.json has layers 0..4, not 9").
        HintAdapter.shapes(student.layerOutputShape(hint.studentLayer()), teachers.getFirst().layerOutputShape(hint.teacherLayer()));
        this.hint = hint;
        return this;
    }

    /** Looks the teachers' logits up in a cache computed once before training instead of running them each step. */
    public Trainer withTeacherCache(TeacherCache.Options options) {
        if (teachers.isEmpty()) throw new IllegalArgumentException("a teacher-logit cache needs a teacher (distillation, not supervised training)");
        if (hint != null) throw new IllegalArgumentException(CACHE_WITH_HINT);
        if (options.topK() > 0) kd.requireTopKTeacherSupport("--teacher-cache-topk " + options.topK());
        this.cacheOptions = options;
        return this;
    }

    private static final String CACHE_WITH_HINT =
        "a teacher-logit cache cannot be combined with a feature hint: the hint needs the teacher's features every step";
    private static final String BF16_WITH_HINT =
        "a bf16 teacher cannot be combined with a feature hint yet: the hint taps the teacher's float32 layer-by-layer forward; use --teacher-dtype f32";

    /**
     * What the frozen teachers' matrix products and convolutions run in: {@link DType#F32} (the
     * default) or {@link DType#BF16}: weights and inputs rounded to bfloat16 (nearest even),
     * products summed in float32, everything else float32 ({@link InferencePlan}'s bf16 plan,
     * compiled once per fit; oneDNN's bf16 kernels on the oneDNN engine, an exact but slow Java
     * loop on the others; a teacher cache is computed the same way). BF16 needs the CPU backend and no
     * feature hint (one-line errors otherwise).
     */
    public Trainer withTeacherDtype(DType dtype) {
        if (teachers.isEmpty()) throw new IllegalArgumentException("a teacher dtype needs a teacher (distillation, not supervised training)");
        if (dtype != DType.F32 && dtype != DType.BF16) throw new IllegalArgumentException("a teacher runs in F32 or BF16, got " + dtype);
        if (dtype == DType.BF16) {
            if (!backend.isHost()) {
                throw new IllegalArgumentException("a bf16 model-spec teacher runs on the CPU backend only so far, not " + backend.name()
                    + ": use --teacher-dtype f32 there");
            }
            if (hint != null) throw new IllegalArgumentException(BF16_WITH_HINT);
        }
        this.teacherDtype = dtype;
        return this;
    }

    /** F32 or BF16: see {@link #withTeacherDtype}. */
    public DType teacherDtype() {
        return teacherDtype;
    }

    /**
     * Instead of stopping at a NaN/Inf loss, skip that optimizer step (the parameters and
     * optimizer state stay as they were) and count it. Costs one host synchronisation per step.
     */
    public Trainer skipNonFinite(boolean skip) {
        this.skipNonFinite = skip;
        return this;
    }

    public Trainer graph(GraphMode mode) {
        this.graphMode = mode;
        return this;
    }

    /** Receives one-line notes (the teacher cache built or reused, graph capture on or off and why). */
    public Trainer onNote(Consumer<String> listener) {
        this.onNote = listener;
        return this;
    }

    /** Stops after this many optimizer steps in total (as a crash would; for tests and --max-steps). */
    public Trainer stopAfter(long steps) {
        this.stopAfterSteps = steps;
        return this;
    }

    /** Called after every optimizer step on the training thread; keep it cheap. */
    public Trainer onStep(Consumer<Progress> listener) {
        this.onStep = listener;
        return this;
    }

    /**
     * Why a step graph cannot be used with this configuration, or null when it can. A graph fixes
     * every kernel argument and buffer address: what changes between steps must come from device
     * memory (the learning rate does; dropout masks, host decisions and checks do not).
     */
    String graphObstacle() {
        if (student.hasDropout()) return "the student has dropout (its mask depends on the step)";
        if (config.clipNorm() > 0) return "gradient clipping reads the norm on the host";
        if (skipNonFinite) return "skipping non-finite steps reads a flag on the host";
        return null;
    }

    public Result fit(Dataset train, Dataset test, Consumer<Metrics> onMetrics) {
        return fit(train, test, onMetrics, null);
    }

    /** Trains for the configured epochs; {@code onMetrics} sees every evaluation; {@code checkpoints} may be null. */
    public Result fit(Dataset train, Dataset test, Consumer<Metrics> onMetrics, Checkpoints checkpoints) {
        check(train, "training");
        check(test, "test");
        String obstacle = graphObstacle();
        if (graphMode == GraphMode.ON && obstacle != null) throw new IllegalArgumentException("--graph on is not possible here: " + obstacle);
        boolean useGraph = graphMode == GraphMode.ON || (graphMode == GraphMode.AUTO && obstacle == null && !backend.isHost());
        String graphNote = useGraph ? "on" : graphMode == GraphMode.OFF ? "off (asked)" : obstacle != null ? "off: " + obstacle : "off: not on a GPU";
        try (StepState st = new StepState(train)) {
            onNote.accept("step graph " + graphNote);
            return st.run(train, test, onMetrics, checkpoints, useGraph, graphNote);
        } catch (IOException e) {
            throw new UncheckedIOException(e.getMessage(), e);
        }
    }

    /** Everything one run holds: optimizer state, the adapter, the cache, static step buffers. */
    private final class StepState implements AutoCloseable {
        final HintAdapter adapter;
        final List<Parameter> trainable = new ArrayList<>();
        final List<Tensor> params, grads;
        final List<Tensor> state1 = new ArrayList<>(), state2 = new ArrayList<>();
        final Tensor stepLoss, hintLoss, microLoss, scalars;
        final Tensor stepTerms, microTerms; // distillation: [loss, soft, hard] of the step / of one micro-batch
        final TeacherCache cache;
        final Arena arena = Arena.ofShared();
        final HostStaging scalarStaging = new HostStaging(backend, 4);
        // Static per-micro-batch buffers for graph replay (fixed addresses), made on first use.
        final List<Tensor> xs = new ArrayList<>(), ys = new ArrayList<>(), ts = new ArrayList<>();
        Backend.Graph graph;
        /**
         * On the CPU's oneDNN engine, each frozen teacher's eval forward compiled as an
         * {@link InferencePlan} for one micro-batch, with one workspace: its linear layers' weights
         * are packed into oneDNN's layout once for this run instead of on every gemm (the teacher
         * is frozen: nothing writes its weights during fit). Empty otherwise (hint taps need the
         * layer-by-layer forward; the GPU has no packing step).
         */
        final List<InferencePlan> teacherPlans = new ArrayList<>();
        final List<InferencePlan.Workspace> teacherWorkspaces = new ArrayList<>();

        StepState(Dataset train) throws IOException {
            Model firstTeacher = teachers.isEmpty() ? null : teachers.getFirst();
            adapter = hint == null ? null
                : new HintAdapter(backend, student.layerOutputShape(hint.studentLayer()), firstTeacher.layerOutputShape(hint.teacherLayer()), config.seed());
            for (Parameter p : student.parameters()) if (p.trainable()) trainable.add(p);
            if (adapter != null) for (Parameter p : adapter.parameters()) trainable.add(p);
            // A tied weight is listed under each of its names: the optimizer, clipping and the checkpoint's optimizer state take it once.
            List<Parameter> distinct = Parameter.distinct(trainable);
            trainable.clear();
            trainable.addAll(distinct);
            params = trainable.stream().map(Parameter::value).toList();
            grads = trainable.stream().map(Parameter::grad).toList();
            for (Tensor p : params) {
                state1.add(backend.zeros(DType.F32, p.shape()));
                if (config.optimizer() == TrainingConfig.Optimizer.ADAMW) state2.add(backend.zeros(DType.F32, p.shape()));
            }
            stepLoss = backend.empty(arena, DType.F32, 1);
            hintLoss = backend.empty(arena, DType.F32, 1);
            microLoss = backend.empty(arena, DType.F32, 1);
            scalars = backend.empty(arena, DType.F32, 4);
            stepTerms = backend.empty(arena, DType.F32, 3);
            microTerms = backend.empty(arena, DType.F32, 3);
            for (Tensor t : List.of(stepLoss, hintLoss, microLoss, scalars, stepTerms, microTerms)) backend.zero(t);
            boolean bf16 = teacherDtype == DType.BF16; // withTeacherDtype checked: CPU backend, no hint
            // The teachers' plans: always for a bf16 teacher (its only forward), else on the oneDNN engine (packed weights). A cache replaces them.
            if (cacheOptions == null && (bf16 || hint == null && backend.isHost() && CpuBlas.engine() == CpuEngine.ONEDNN
                    && teachers.stream().allMatch(t -> t.parameters().stream().allMatch(p -> p.value().dtype() == DType.F32 || isCounter(p))))) {
                try {
                    for (Model t : teachers) {
                        InferencePlan plan = InferencePlan.compile(t, config.batchSize(), true, teacherDtype);
                        teacherPlans.add(plan);
                        teacherWorkspaces.add(plan.newWorkspace());
                    }
                } catch (RuntimeException e) {
                    close();
                    throw e;
                }
            }
            if (bf16) {
                onNote.accept("teacher runs in bf16: bf16 weights and inputs, float32 sums ("
                    + (CpuBlas.hasFastBf16() ? "oneDNN's bf16 kernels" : "the " + CpuBlas.engine().key() + " engine has no bf16 product: an exact Java loop, slow")
                    + (cacheOptions != null ? "; the teacher cache is computed so" : "") + ")");
            }
            if (cacheOptions != null) {
                long t0 = System.nanoTime();
                try {
                    cache = TeacherCache.build(backend, teachers, kd.temperature(), train, config.batchSize(), cacheOptions, teacherDtype);
                } catch (IOException | RuntimeException e) {
                    close(); // nothing of this run may outlive a failed start (a long-lived service retries)
                    throw e;
                }
                onNote.accept(String.format(Locale.ROOT, "teacher cache: %s %s, %.1f MiB, %s in %.1f s", cacheOptions.storage().name().toLowerCase(Locale.ROOT)
                    + (cacheOptions.file() != null ? " " + cacheOptions.file() : ""), cacheOptions.dtype() + (cacheOptions.topK() > 0 ? " top-" + cacheOptions.topK() : ""),
                    cache.tableBytes() / 1048576.0,
                    cache.reused() ? "reused" : "computed", (System.nanoTime() - t0) / 1e9));
            } else {
                cache = null;
            }
        }

        Result run(Dataset train, Dataset test, Consumer<Metrics> onMetrics, Checkpoints checkpoints, boolean graphAsked, String note)
            throws IOException {
            boolean useGraph = graphAsked;
            String graphNote = note;
            List<Metrics> history = new ArrayList<>();
            long step = 0, micro = 0, samples = 0, firstBatch = 0, skipped = 0;
            int firstEpoch = 0;
            long t0 = System.nanoTime();
            double lastLoss = Double.NaN, lastHint = Double.NaN, lastSoft = Double.NaN, lastHard = Double.NaN, lastEvalLoss = Double.NaN,
                lastAccuracy = Double.NaN;
            try (DataLoader loader = new DataLoader(train, backend, config.batchSize(), true, config.seed(), false)) {
                if (checkpoints != null && checkpoints.resume()) {
                    var latest = checkpoints.latest();
                    if (latest.isPresent()) {
                        long[] pos = restore(latest.get(), this);
                        firstEpoch = (int) pos[0];
                        firstBatch = pos[1];
                        step = pos[2];
                        micro = pos[3];
                        skipped = pos[4];
                    }
                }
                long perEpoch = loader.batchesPerEpoch();
                int acc = config.accumulation(), batch = config.batchSize();
                long groupsPerEpoch = (perEpoch + acc - 1) / acc;
                long total = groupsPerEpoch * config.epochs();
                for (int epoch = firstEpoch; epoch < config.epochs() && step < stopAfterSteps; epoch++) {
                    loader.start(epoch, epoch == firstEpoch ? firstBatch : 0);
                    if (cache != null) cache.startEpoch(loader.epochOrder());
                    long batchInEpoch = epoch == firstEpoch ? firstBatch : 0;
                    while (loader.hasNext() && step < stopAfterSteps) {
                        // One optimizer step over a group of micro-batches, normalised by the group's rows.
                        long groupStart = batchInEpoch * batch;
                        long groupRows = Math.min((long) batch * acc, train.size() - groupStart);
                        writeScalars(step + 1, total);
                        // A graph replays only full groups (its shapes and normaliser are fixed); the last, short group of an epoch runs directly.
                        if (useGraph && groupRows == (long) batch * acc) {
                            for (int k = 0; k < acc; k++) {
                                DataLoader.Batch b = loader.next();
                                if (xs.size() <= k) {
                                    xs.add(backend.empty(arena, b.x().dtype(), b.x().shape()));
                                    ys.add(backend.empty(arena, b.y().dtype(), b.y().shape()));
                                    ts.add(cache == null ? null : backend.empty(arena, DType.F32, b.rows(), student.outputShape()[0]));
                                }
                                backend.copy(b.x(), xs.get(k));
                                backend.copy(b.y(), ys.get(k));
                                if (cache != null) cache.lookup(b.firstPosition(), b.rows(), ts.get(k));
                                samples += b.rows();
                                batchInEpoch++;
                            }
                            final long firstMicro = micro;
                            Runnable work = () -> {
                                beginStep();
                                for (int k = 0; k < acc; k++) microStep(xs.get(k), ys.get(k), ts.get(k), groupRows, firstMicro + k);
                                update();
                            };
                            if (graph == null) {
                                try {
                                    graph = backend.capture(work);
                                } catch (RuntimeException e) {
                                    // Nothing captured ran, so the step can run directly. Asked for (on): an error;
                                    // auto: go on without graphs and say why.
                                    if (graphMode == GraphMode.ON) throw e;
                                    useGraph = false;
                                    graphNote = "off: capture failed (" + e.getMessage() + ")";
                                    onNote.accept("step graph " + graphNote);
                                }
                            }
                            if (graph != null) graph.replay();
                            else work.run();
                            micro += acc;
                        } else {
                            beginStep();
                            for (int k = 0; k < acc && loader.hasNext(); k++) {
                                DataLoader.Batch b = loader.next();
                                try (Arena scratch = Arena.ofShared()) {
                                    Tensor t = null;
                                    if (cache != null) {
                                        t = backend.empty(scratch, DType.F32, b.rows(), student.outputShape()[0]);
                                        cache.lookup(b.firstPosition(), b.rows(), t);
                                    }
                                    microStep(b.x(), b.y(), t, groupRows, micro);
                                }
                                samples += b.rows();
                                micro++;
                                batchInEpoch++;
                            }
                            if (config.clipNorm() > 0) clip();
                            if (skipNonFinite && backend.hasNonFinite(concat(stepLoss, grads))) {
                                skipped++;
                            } else {
                                update();
                            }
                        }
                        step++;
                        if (step % config.logEvery() == 0) {
                            lastLoss = stepLoss.item();
                            lastHint = adapter == null ? Double.NaN : hintLoss.item();
                            if (!teachers.isEmpty()) {
                                float[] terms = backend.read(stepTerms);
                                lastSoft = terms[1];
                                lastHard = terms[2];
                            }
                            if (!Double.isFinite(lastLoss) && !skipNonFinite) {
                                throw new IllegalStateException("the loss became " + lastLoss + " at step " + step + " (epoch " + (epoch + 1) + ")"
                                    + lastCheckpoint(checkpoints) + "; lower the learning rate, or pass --skip-non-finite to skip such batches");
                            }
                        }
                        double secsSoFar = (System.nanoTime() - t0) / 1e9;
                        onStep.accept(new Progress(epoch + 1, config.epochs(), (batchInEpoch + acc - 1) / acc, groupsPerEpoch, step, total, lastLoss,
                            samples / secsSoFar, secsSoFar));
                        if (checkpoints != null && step % checkpoints.everySteps() == 0) {
                            save(checkpoints, this, loader.hasNext() ? epoch : epoch + 1, loader.hasNext() ? batchInEpoch : 0, step, micro, skipped);
                        }
                    }
                    if (step >= stopAfterSteps) break;
                    if ((epoch + 1) % config.evalEvery() == 0 || epoch + 1 == config.epochs()) {
                        double[] ev = evaluate(test);
                        lastEvalLoss = ev[0];
                        lastAccuracy = ev[1];
                        double secs = (System.nanoTime() - t0) / 1e9;
                        Metrics m = new Metrics(epoch + 1, step, lastLoss, lastSoft, lastHard, lastHint, lastEvalLoss, lastAccuracy,
                            config.lrAt(Math.max(0, step - 1), total),
                            samples / secs, secs, skipped);
                        history.add(m);
                        onMetrics.accept(m);
                    }
                }
                if (checkpoints != null && step < stopAfterSteps) save(checkpoints, this, config.epochs(), 0, step, micro, skipped);
            }
            double secs = (System.nanoTime() - t0) / 1e9;
            return new Result(lastAccuracy, lastEvalLoss, step, secs, samples / secs, history, skipped, graphNote);
        }

        /** Zeroes the gradients and the step's loss accumulators. */
        void beginStep() {
            student.zeroGrad();
            if (adapter != null) adapter.zeroGrad();
            backend.zero(stepLoss);
            backend.zero(hintLoss);
            backend.zero(stepTerms);
        }

        /**
         * One micro-batch: teacher forward (or the cached logits {@code cached}), student forward,
         * the fused loss with dL/dlogits in place, the hint term, student backward. Everything
         * lives in one arena closed at the end, so the work is the same captured or not.
         */
        void microStep(Tensor x, Tensor y, Tensor cached, long groupRows, long micro) {
            try (Arena a = Arena.ofShared()) {
                Layer.Pass train = new Layer.Pass(backend, a, true, config.seed(), micro);
                Tensor[] sTap = new Tensor[1];
                Tensor logits = hint == null ? student.forward(train, x) : student.forward(train, x, hint.studentLayer(), sTap);
                Tensor dHint = null;
                if (teachers.isEmpty()) {
                    backend.crossEntropy(logits, y, -100, 0f, microLoss, logits);
                    float share = x.size(0) / (float) groupRows;
                    if (share != 1f) backend.scale(share, logits);
                    backend.axpy(share, microLoss, stepLoss);
                } else {
                    Tensor t;
                    if (cached != null) {
                        t = cached;
                    } else if (hint != null) {
                        Tensor[] tTap = new Tensor[1];
                        t = teacherLogits(backend, a, teachers, kd.temperature(), x, hint.teacherLayer(), tTap);
                        dHint = adapter.loss(train, sTap[0], tTap[0], hint.weight(), groupRows, microLoss);
                        backend.axpy(1f, microLoss, hintLoss);
                        backend.axpy(1f, microLoss, stepLoss);
                    } else if (!teacherPlans.isEmpty() && x.dtype() == DType.F32) {
                        t = plannedTeacherLogits(a, x);
                    } else if (teacherDtype == DType.BF16) {
                        throw new IllegalArgumentException("a bf16 teacher takes float32 inputs, got " + x.describe());
                    } else {
                        t = teacherLogits(backend, a, teachers, kd.temperature(), x);
                    }
                    backend.distillationLoss(logits, t, kd.alpha() < 1 ? y : null, kd, groupRows, microTerms, logits);
                    backend.axpy(1f, microTerms, stepTerms);
                    backend.axpy(1f, microTerms.narrow0(0, 1), stepLoss);
                }
                if (dHint == null) student.backward(train, logits, false);
                else student.backward(train, logits, hint.studentLayer(), dHint);
            }
        }

        /**
         * {@link #teacherLogits} through the teachers' plans: x [rows, ...] copied into each plan's
         * input, the forward run, the logits read in place from the plan's output buffer (valid
         * until the next micro-batch; the loss consumes them first).
         */
        private Tensor plannedTeacherLogits(Arena a, Tensor x) {
            return Trainer.plannedTeacherLogits(backend, a, teachers, teacherWorkspaces, kd.temperature(), x);
        }

        /** The optimizer update; its learning rate and bias corrections come from {@code scalars} on the device. */
        void update() {
            if (config.optimizer() == TrainingConfig.Optimizer.SGD) {
                backend.sgdStep(sgd(0f), scalars, params, grads, state1);
            } else {
                backend.adamwStep(adamw(0f), scalars, params, grads, state1, state2);
            }
        }

        Optimizers.Sgd sgd(float lr) {
            return new Optimizers.Sgd(lr, config.momentum(), 0f, config.nesterov(), config.weightDecay());
        }

        Optimizers.AdamW adamw(float lr) {
            return new Optimizers.AdamW(lr, 0.9f, 0.999f, 1e-8f, config.weightDecay());
        }

        /** Writes this step's optimizer scalars to the device without synchronising (a ring of four pinned slots). */
        void writeScalars(long step, long total) {
            float lr = config.lrAt(step - 1, total);
            float[] values = config.optimizer() == TrainingConfig.Optimizer.SGD ? sgd(lr).scalars(step) : adamw(lr).scalars(step);
            MemorySegment staged = scalarStaging.take(16);
            MemorySegment.copy(values, 0, staged, java.lang.foreign.ValueLayout.JAVA_FLOAT, 0, 4);
            scalarStaging.send(staged, scalars);
        }

        /** Scales all gradients so that their global L2 norm is at most clipNorm (one host read for all of them). */
        void clip() {
            clipGlobalNorm(backend, grads, config.clipNorm());
        }

        @Override
        public void close() {
            scalarStaging.close();
            if (graph != null) graph.close();
            backend.synchronize();
            if (cache != null) cache.close();
            state1.forEach(Tensor::close);
            state2.forEach(Tensor::close);
            if (adapter != null) adapter.close();
            teacherWorkspaces.forEach(InferencePlan.Workspace::close);
            teacherPlans.forEach(InferencePlan::close);
            arena.close();
        }
    }

    /**
     * Scales {@code grads} so that their global L2 norm is at most {@code maxNorm}, as
     * torch.nn.utils.clip_grad_norm_ (factor maxNorm / (norm + 1e-6)); one host read for all of them.
     */
    public static void clipGlobalNorm(Backend backend, List<Tensor> grads, float maxNorm) {
        double sq = 0;
        try (Arena a = Arena.ofShared()) {
            Tensor sums = backend.empty(a, DType.F32, grads.size()); // sum of squares of each gradient
            for (int i = 0; i < grads.size(); i++) {
                Tensor g = grads.get(i), g2 = backend.empty(a, DType.F32, g.shape());
                backend.mul(g, g, g2);
                backend.reduceRows(Reduction.SUM, g2.view(1, g.numel()), sums.narrow0(i, 1));
            }
            for (float v : backend.read(sums)) sq += v;
        }
        double n = Math.sqrt(sq);
        if (n > maxNorm) for (Tensor g : grads) backend.scale((float) (maxNorm / (n + 1e-6)), g);
    }

    private static Tensor[] concat(Tensor first, List<Tensor> rest) {
        Tensor[] all = new Tensor[rest.size() + 1];
        all[0] = first;
        for (int i = 0; i < rest.size(); i++) all[i + 1] = rest.get(i);
        return all;
    }

    /**
     * An integer buffer no forward reads (batch norm's num_batches_tracked, I64): it does not keep
     * a teacher off the float32 inference plan, which reads only the float parameters.
     */
    private static boolean isCounter(Parameter p) {
        return !p.trainable() && (p.value().dtype() == DType.I64 || p.value().dtype() == DType.I32);
    }

    /**
     * {@link #teacherLogits} through the teachers' compiled plans (one workspace each, for at least
     * x's rows): x [rows, ...] copied into each plan's input, the forward run, the logits read in
     * place from the plan's output buffer (valid until the workspace runs again).
     */
    static Tensor plannedTeacherLogits(Backend backend, Arena a, List<Model> teachers, List<InferencePlan.Workspace> workspaces, float temperature, Tensor x) {
        int rows = (int) x.size(0);
        List<Tensor> all = new ArrayList<>(workspaces.size());
        for (int i = 0; i < workspaces.size(); i++) {
            InferencePlan.Workspace ws = workspaces.get(i);
            MemorySegment.copy(x.data(), 0, ws.input(), 0, x.byteSize());
            ws.run(rows);
            long[] shape = teachers.get(i).outputShape();
            long[] withRows = new long[shape.length + 1];
            withRows[0] = rows;
            System.arraycopy(shape, 0, withRows, 1, shape.length);
            all.add(Tensor.wrap(backend, DType.F32, withRows, ws.output().asSlice(0, Tensor.numel(withRows) * Float.BYTES), null));
        }
        if (all.size() == 1) return all.getFirst();
        Tensor avg = backend.empty(a, DType.F32, all.getFirst().shape());
        backend.averageTeachers(all, temperature, avg);
        return avg;
    }

    /** The teacher's logits, or for several teachers the logits of their averaged softened distribution (eval mode, in {@code arena}). */
    static Tensor teacherLogits(Backend backend, Arena arena, List<Model> teachers, float temperature, Tensor x) {
        return teacherLogits(backend, arena, teachers, temperature, x, -1, null);
    }

    /** As above; with {@code tap} >= 0 the first teacher's top-level layer {@code tap} output lands in {@code tapped[0]} (for a hint). */
    static Tensor teacherLogits(Backend backend, Arena arena, List<Model> teachers, float temperature, Tensor x, int tap, Tensor[] tapped) {
        List<Tensor> all = new ArrayList<>();
        for (Model t : teachers) {
            Layer.Pass eval = new Layer.Pass(backend, arena, false, 0, 0);
            all.add(tap >= 0 && all.isEmpty() ? t.forward(eval, x, tap, tapped) : t.forward(eval, x));
        }
        if (all.size() == 1) return all.getFirst();
        Tensor avg = backend.empty(arena, DType.F32, all.getFirst().shape());
        backend.averageTeachers(all, temperature, avg);
        return avg;
    }

    private static String lastCheckpoint(Checkpoints c) {
        try {
            return c == null ? "" : c.latest().map(p -> "; the last good checkpoint is " + p).orElse("; no checkpoint was written yet");
        } catch (IOException e) {
            return "";
        }
    }

    private void save(Checkpoints c, StepState st, long epoch, long batch, long step, long micro, long skipped) throws IOException {
        Files.createDirectories(c.dir());
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Parameter p : student.parameters()) tensors.put("model." + p.name(), p.value());
        if (st.adapter != null) for (Parameter p : st.adapter.parameters()) tensors.put("adapter." + p.name(), p.value());
        for (int i = 0; i < st.trainable.size(); i++) {
            tensors.put("optim.state1." + st.trainable.get(i).name(), st.state1.get(i));
            if (!st.state2.isEmpty()) tensors.put("optim.state2." + st.trainable.get(i).name(), st.state2.get(i));
        }
        Safetensors.write(c.file(step), tensors, Map.of("epoch", Long.toString(epoch), "batch", Long.toString(batch), "step", Long.toString(step),
            "micro", Long.toString(micro), "skipped", Long.toString(skipped), "seed", Long.toString(config.seed()), "optimizer", config.optimizer().name()));
        c.prune();
    }

    /** Loads a checkpoint; returns [epoch, batch, step, micro, skipped]. */
    private long[] restore(Path file, StepState state) throws IOException {
        try (Safetensors st = Safetensors.open(file)) {
            Map<String, String> meta = st.metadata();
            for (String k : List.of("epoch", "batch", "step", "micro", "seed", "optimizer")) {
                if (!meta.containsKey(k)) throw new IllegalArgumentException(file + ": not a Distill4J checkpoint (metadata '" + k + "' is missing)");
            }
            if (Long.parseLong(meta.get("seed")) != config.seed() || !meta.get("optimizer").equals(config.optimizer().name())) {
                throw new IllegalArgumentException(file + ": was written with seed " + meta.get("seed") + " and " + meta.get("optimizer")
                    + "; this run uses seed " + config.seed() + " and " + config.optimizer());
            }
            student.loadFrom(st, "model.");
            if (state.adapter != null) {
                for (Parameter p : state.adapter.parameters()) {
                    if (!st.entries().containsKey("adapter." + p.name())) {
                        throw new IllegalArgumentException(file + ": has no hint adapter (adapter." + p.name() + "); it was written by a run without --hint");
                    }
                    st.copyInto("adapter." + p.name(), p.value());
                }
            }
            for (int i = 0; i < state.trainable.size(); i++) {
                st.copyInto("optim.state1." + state.trainable.get(i).name(), state.state1.get(i));
                if (!state.state2.isEmpty()) st.copyInto("optim.state2." + state.trainable.get(i).name(), state.state2.get(i));
            }
            return new long[] {Long.parseLong(meta.get("epoch")), Long.parseLong(meta.get("batch")), Long.parseLong(meta.get("step")),
                Long.parseLong(meta.get("micro")), Long.parseLong(meta.getOrDefault("skipped", "0"))};
        }
    }

    private void check(Dataset d, String what) {
        if (!Arrays.equals(d.sampleShape(), student.inputShape())) {
            throw new IllegalArgumentException("the " + what + " data has samples " + Arrays.toString(d.sampleShape()) + " but the model takes "
                + Arrays.toString(student.inputShape()));
        }
        long classes = student.outputShape()[student.outputShape().length - 1];
        if (d.classes() > classes) {
            throw new IllegalArgumentException("the " + what + " data has labels up to " + (d.classes() - 1) + " but the model outputs " + classes + " classes");
        }
    }

    /** [mean cross-entropy, accuracy] of the student on a dataset, in eval mode. */
    public double[] evaluate(Dataset test) {
        return evaluate(backend, student, test, config.batchSize());
    }

    public static double[] evaluate(Backend backend, Model model, Dataset test, int batchSize) {
        double lossSum = 0;
        try (DataLoader loader = new DataLoader(test, backend, batchSize, false, 0, false); Tensor loss = backend.empty(DType.F32, 1);
             Tensor correct = backend.zeros(DType.I64, 1)) {
            loader.start(0, 0);
            while (loader.hasNext()) {
                DataLoader.Batch b = loader.next();
                try (Arena arena = Arena.ofShared()) {
                    Tensor logits = model.forward(new Layer.Pass(backend, arena, false, 0, 0), b.x());
                    backend.crossEntropy(logits, b.y(), -100, 0f, loss, null);
                    backend.correctCount(logits, b.y(), -100, correct);
                    lossSum += (double) loss.item() * b.rows();
                }
            }
            return new double[] {lossSum / test.size(), correct.toLongArray()[0] / (double) test.size()};
        }
    }
}
