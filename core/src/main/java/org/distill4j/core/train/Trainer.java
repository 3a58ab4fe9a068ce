package org.distill4j.core.train;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Optimizers;
import org.distill4j.core.Tensor;
import org.distill4j.core.data.DataLoader;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.Parameter;

/**
 * Trains a model with cross-entropy ({@link #supervised}) or distils it from a frozen teacher
 * ({@link #distillation}: the teacher runs in eval mode, forward only, keeping nothing; the student
 * learns from the fused distillation loss). One step: teacher forward, student forward, loss and
 * dL/dlogits in one call (in place over the logits), student backward, one fused optimizer update;
 * the loss is read back only every {@code logEvery} steps.
 */
public final class Trainer {
    /** What one evaluation or log point reports. */
    public record Metrics(int epoch, long step, double trainLoss, double testLoss, double testAccuracy, float lr, double samplesPerSecond,
                          double seconds) {}

    /** The end of a run. */
    public record Result(double testAccuracy, double testLoss, long steps, double seconds, double samplesPerSecond, List<Metrics> history) {}

    private final Backend backend;
    private final Model student;
    private final Model teacher;
    private final DistillationLoss kd;
    private final TrainingConfig config;

    private Trainer(Backend backend, Model student, Model teacher, DistillationLoss kd, TrainingConfig config) {
        this.backend = backend;
        this.student = student;
        this.teacher = teacher;
        this.kd = kd;
        this.config = config;
    }

    public static Trainer supervised(Backend backend, Model model, TrainingConfig config) {
        return new Trainer(backend, model, null, null, config);
    }

    public static Trainer distillation(Backend backend, Model student, Model teacher, DistillationLoss loss, TrainingConfig config) {
        long[] s = student.outputShape(), t = teacher.outputShape();
        if (!java.util.Arrays.equals(s, t)) {
            throw new IllegalArgumentException("teacher outputs " + java.util.Arrays.toString(t) + " but the student outputs " + java.util.Arrays.toString(s)
                + ": the class counts must match");
        }
        if (!java.util.Arrays.equals(student.inputShape(), teacher.inputShape())) {
            throw new IllegalArgumentException("teacher takes " + java.util.Arrays.toString(teacher.inputShape()) + " but the student takes "
                + java.util.Arrays.toString(student.inputShape()));
        }
        return new Trainer(backend, student, teacher, loss, config);
    }

    /** Trains for the configured epochs; {@code onMetrics} sees every log and evaluation point. */
    public Result fit(Dataset train, Dataset test, Consumer<Metrics> onMetrics) {
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
        long step = 0;
        long t0 = System.nanoTime();
        long samples = 0;
        double lastLoss = Double.NaN, lastEvalLoss = Double.NaN, lastAccuracy = Double.NaN;
        try (DataLoader loader = new DataLoader(train, backend, config.batchSize(), true, config.seed(), false);
             Tensor loss = backend.empty(DType.F32, 1)) {
            long total = loader.batchesPerEpoch() * config.epochs();
            for (int epoch = 0; epoch < config.epochs(); epoch++) {
                loader.start(epoch, 0);
                while (loader.hasNext()) {
                    DataLoader.Batch batch = loader.next();
                    float lr = config.lrAt(step, total);
                    try (Arena arena = Arena.ofShared()) {
                        student.zeroGrad();
                        Tensor logits = student.forward(new Layer.Pass(backend, arena, true, config.seed(), step), batch.x());
                        if (teacher != null) {
                            Tensor t = teacher.forward(new Layer.Pass(backend, arena, false, 0, 0), batch.x());
                            backend.distillationLoss(logits, t, kd.alpha() < 1 ? batch.y() : null, kd, 0, loss, logits);
                        } else {
                            backend.crossEntropy(logits, batch.y(), -100, 0f, loss, logits);
                        }
                        student.backward(new Layer.Pass(backend, arena, true, config.seed(), step), logits);
                        if (config.optimizer() == TrainingConfig.Optimizer.SGD) {
                            backend.sgdStep(new Optimizers.Sgd(lr, config.momentum(), 0f, config.nesterov(), config.weightDecay()), step + 1, params,
                                grads, state1);
                        } else {
                            backend.adamwStep(new Optimizers.AdamW(lr, 0.9f, 0.999f, 1e-8f, config.weightDecay()), step + 1, params, grads, state1, state2);
                        }
                    }
                    samples += batch.rows();
                    step++;
                    if (step % config.logEvery() == 0) {
                        lastLoss = loss.item();
                        if (!Double.isFinite(lastLoss)) {
                            throw new IllegalStateException("the loss became " + lastLoss + " at step " + step + " (epoch " + (epoch + 1)
                                + "); lower the learning rate");
                        }
                    }
                }
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
        } finally {
            state1.forEach(Tensor::close);
            state2.forEach(Tensor::close);
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        return new Result(lastAccuracy, lastEvalLoss, step, secs, samples / secs, history);
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
