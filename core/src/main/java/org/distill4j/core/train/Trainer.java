package org.distill4j.core.train;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Reduction;
import org.distill4j.core.Tensor;
import org.distill4j.core.data.DataLoader;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.loss.DistillationLoss;
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
    /** What one evaluation point reports. */
    public record Metrics(int epoch, long step, double trainLoss, double testLoss, double testAccuracy, float lr, double samplesPerSecond,
                          double seconds) {}

    /** Progress after an optimizer step (for progress bars); {@code loss} is the last value read back (NaN before the first). */
    public record Progress(int epoch, int epochs, long stepInEpoch, long stepsPerEpoch, long step, long totalSteps, double loss, double samplesPerSecond,
                           double seconds) {}

    /** The end of a run. */
    public record Result(double testAccuracy, double testLoss, long steps, double seconds, double samplesPerSecond, List<Metrics> history) {}

    private final Backend backend;
    private final Model student;
    private final List<Model> teachers;
    private final DistillationLoss kd;
    private final TrainingConfig config;
    private long stopAfterSteps = Long.MAX_VALUE;
    private Consumer<Progress> onStep = p -> { };

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
            if (!java.util.Arrays.equals(s, t)) {
                throw new IllegalArgumentException("teacher " + teacher.spec().source() + " outputs " + java.util.Arrays.toString(t) + " but the student outputs "
                    + java.util.Arrays.toString(s) + ": the class counts must match");
            }
            if (!java.util.Arrays.equals(student.inputShape(), teacher.inputShape())) {
                throw new IllegalArgumentException("teacher " + teacher.spec().source() + " takes " + java.util.Arrays.toString(teacher.inputShape())
                    + " but the student takes " + java.util.Arrays.toString(student.inputShape()));
            }
        }
        return new Trainer(backend, student, List.copyOf(teachers), loss, config);
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

    public Result fit(Dataset train, Dataset test, Consumer<Metrics> onMetrics) {
        return fit(train, test, onMetrics, null);
    }

    /** Trains for the configured epochs; {@code onMetrics} sees every evaluation; {@code checkpoints} may be null. */
    public Result fit(Dataset train, Dataset test, Consumer<Metrics> onMetrics, Checkpoints checkpoints) {
        check(train, "training");
        check(test, "test");
        List<Parameter> trainable = student.parameters().stream().filter(Parameter::trainable).toList();
        List<Tensor> params = trainable.stream().map(Parameter::value).toList(), grads = trainable.stream().map(Parameter::grad).toList();
        List<Tensor> state1 = new ArrayList<>(), state2 = new ArrayList<>();
        for (Tensor p : params) {
            state1.add(backend.zeros(DType.F32, p.shape()));
            if (config.optimizer() == TrainingConfig.Optimizer.ADAMW) state2.add(backend.zeros(DType.F32, p.shape()));
        }
        List<Metrics> history = new ArrayList<>();
        long step = 0, micro = 0, samples = 0, firstBatch = 0;
        int firstEpoch = 0;
        long t0 = System.nanoTime();
        double lastLoss = Double.NaN, lastEvalLoss = Double.NaN, lastAccuracy = Double.NaN;
        try (DataLoader loader = new DataLoader(train, backend, config.batchSize(), true, config.seed(), false);
             Tensor loss = backend.empty(DType.F32, 1); Tensor norm = backend.empty(DType.F32, 1)) {
            if (checkpoints != null && checkpoints.resume()) {
                var latest = checkpoints.latest();
                if (latest.isPresent()) {
                    long[] pos = restore(latest.get(), trainable, state1, state2);
                    firstEpoch = (int) pos[0];
                    firstBatch = pos[1];
                    step = pos[2];
                    micro = pos[3];
                }
            }
            long perEpoch = loader.batchesPerEpoch();
            long groupsPerEpoch = (perEpoch + config.accumulation() - 1) / config.accumulation();
            long total = groupsPerEpoch * config.epochs();
            for (int epoch = firstEpoch; epoch < config.epochs() && step < stopAfterSteps; epoch++) {
                loader.start(epoch, epoch == firstEpoch ? firstBatch : 0);
                long batchInEpoch = epoch == firstEpoch ? firstBatch : 0;
                while (loader.hasNext() && step < stopAfterSteps) {
                    float lr = config.lrAt(step, total);
                    // One optimizer step over a group of micro-batches, normalised by the group's rows.
                    long groupStart = batchInEpoch * config.batchSize();
                    long groupRows = Math.min((long) config.batchSize() * config.accumulation(), train.size() - groupStart);
                    student.zeroGrad();
                    for (int k = 0; k < config.accumulation() && loader.hasNext(); k++) {
                        DataLoader.Batch batch = loader.next();
                        try (Arena arena = Arena.ofShared()) {
                            Tensor logits = student.forward(new Layer.Pass(backend, arena, true, config.seed(), micro), batch.x());
                            if (!teachers.isEmpty()) {
                                Tensor t = teacherLogits(arena, batch.x());
                                backend.distillationLoss(logits, t, kd.alpha() < 1 ? batch.y() : null, kd, groupRows, loss, logits);
                            } else {
                                backend.crossEntropy(logits, batch.y(), -100, 0f, loss, logits);
                                if (batch.rows() != groupRows) backend.scale(batch.rows() / (float) groupRows, logits);
                            }
                            student.backward(new Layer.Pass(backend, arena, true, config.seed(), micro), logits);
                        }
                        samples += batch.rows();
                        micro++;
                        batchInEpoch++;
                    }
                    if (config.clipNorm() > 0) clip(grads, norm);
                    if (config.optimizer() == TrainingConfig.Optimizer.SGD) {
                        backend.sgdStep(new Optimizers.Sgd(lr, config.momentum(), 0f, config.nesterov(), config.weightDecay()), step + 1, params, grads,
                            state1);
                    } else {
                        backend.adamwStep(new Optimizers.AdamW(lr, 0.9f, 0.999f, 1e-8f, config.weightDecay()), step + 1, params, grads, state1, state2);
                    }
                    step++;
                    if (step % config.logEvery() == 0) {
                        lastLoss = loss.item();
                        if (!Double.isFinite(lastLoss)) {
                            throw new IllegalStateException("the loss became " + lastLoss + " at step " + step + " (epoch " + (epoch + 1) + ")"
                                + lastCheckpoint(checkpoints) + "; lower the learning rate");
                        }
                    }
                    double secsSoFar = (System.nanoTime() - t0) / 1e9;
                    onStep.accept(new Progress(epoch + 1, config.epochs(), (batchInEpoch + config.accumulation() - 1) / config.accumulation(), groupsPerEpoch,
                        step, total, lastLoss, samples / secsSoFar, secsSoFar));
                    if (checkpoints != null && step % checkpoints.everySteps() == 0) {
                        save(checkpoints, trainable, state1, state2, loader.hasNext() ? epoch : epoch + 1, loader.hasNext() ? batchInEpoch : 0, step, micro);
                    }
                }
                if (step >= stopAfterSteps) break;
                if ((epoch + 1) % config.evalEvery() == 0 || epoch + 1 == config.epochs()) {
                    double[] ev = evaluate(test);
                    lastEvalLoss = ev[0];
                    lastAccuracy = ev[1];
                    double secs = (System.nanoTime() - t0) / 1e9;
                    Metrics m = new Metrics(epoch + 1, step, lastLoss, lastEvalLoss, lastAccuracy, config.lrAt(step, total), samples / secs, secs);
                    history.add(m);
                    onMetrics.accept(m);
                }
            }
            if (checkpoints != null && step < stopAfterSteps) save(checkpoints, trainable, state1, state2, config.epochs(), 0, step, micro);
        } catch (IOException e) {
            throw new UncheckedIOException("checkpoint: " + e.getMessage(), e);
        } finally {
            state1.forEach(Tensor::close);
            state2.forEach(Tensor::close);
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        return new Result(lastAccuracy, lastEvalLoss, step, secs, samples / secs, history);
    }

    /** The teacher's logits, or for several teachers the logits of their averaged softened distribution. */
    private Tensor teacherLogits(Arena arena, Tensor x) {
        if (teachers.size() == 1) return teachers.getFirst().forward(new Layer.Pass(backend, arena, false, 0, 0), x);
        List<Tensor> all = new ArrayList<>();
        for (Model t : teachers) all.add(t.forward(new Layer.Pass(backend, arena, false, 0, 0), x));
        Tensor avg = backend.empty(arena, DType.F32, all.getFirst().shape());
        backend.averageTeachers(all, kd.temperature(), avg);
        return avg;
    }

    private static String lastCheckpoint(Checkpoints c) {
        try {
            return c == null ? "" : c.latest().map(p -> "; the last good checkpoint is " + p).orElse("; no checkpoint was written yet");
        } catch (IOException e) {
            return "";
        }
    }

    /** Scales all gradients so that their global L2 norm is at most clipNorm (one host read). */
    private void clip(List<Tensor> grads, Tensor norm) {
        double sq = 0;
        for (Tensor g : grads) {
            try (Arena arena = Arena.ofShared()) {
                Tensor g2 = backend.empty(arena, DType.F32, g.shape());
                backend.mul(g, g, g2);
                backend.reduceRows(Reduction.SUM, g2.view(1, g.numel()), norm);
                sq += norm.item();
            }
        }
        double n = Math.sqrt(sq);
        if (n > config.clipNorm()) for (Tensor g : grads) backend.scale((float) (config.clipNorm() / (n + 1e-6)), g);
    }

    private void save(Checkpoints c, List<Parameter> trainable, List<Tensor> s1, List<Tensor> s2, long epoch, long batch, long step, long micro)
        throws IOException {
        Files.createDirectories(c.dir());
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Parameter p : student.parameters()) tensors.put("model." + p.name(), p.value());
        for (int i = 0; i < trainable.size(); i++) {
            tensors.put("optim.state1." + trainable.get(i).name(), s1.get(i));
            if (!s2.isEmpty()) tensors.put("optim.state2." + trainable.get(i).name(), s2.get(i));
        }
        Safetensors.write(c.file(step), tensors, Map.of("epoch", Long.toString(epoch), "batch", Long.toString(batch), "step", Long.toString(step),
            "micro", Long.toString(micro), "seed", Long.toString(config.seed()), "optimizer", config.optimizer().name()));
        c.prune();
    }

    /** Loads a checkpoint; returns [epoch, batch, step, micro]. */
    private long[] restore(Path file, List<Parameter> trainable, List<Tensor> s1, List<Tensor> s2) throws IOException {
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
            for (int i = 0; i < trainable.size(); i++) {
                st.copyInto("optim.state1." + trainable.get(i).name(), s1.get(i));
                if (!s2.isEmpty()) st.copyInto("optim.state2." + trainable.get(i).name(), s2.get(i));
            }
            return new long[] {Long.parseLong(meta.get("epoch")), Long.parseLong(meta.get("batch")), Long.parseLong(meta.get("step")),
                Long.parseLong(meta.get("micro"))};
        }
    }

    private void check(Dataset d, String what) {
        if (!java.util.Arrays.equals(d.sampleShape(), student.inputShape())) {
            throw new IllegalArgumentException("the " + what + " data has samples " + java.util.Arrays.toString(d.sampleShape()) + " but the model takes "
                + java.util.Arrays.toString(student.inputShape()));
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
