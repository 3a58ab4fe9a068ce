package org.distill4j.cli;

import java.io.PrintWriter;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Locale;
import java.util.Random;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.Trainer;
import org.distill4j.core.train.TrainingConfig;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill bench kd-step}: times full distillation steps of the real trainer (data loader,
 * teacher forward in eval mode, student forward and backward, the fused loss, AdamW) on synthetic
 * data of the specs' input shape. After {@code warmup} steps, {@code repeats} runs of
 * {@code steps} steps are each timed between two device synchronisations; the last line is the
 * median rate. The same step in PyTorch is bench/pytorch/kd_step.py.
 */
@Command(name = "kd-step", mixinStandardHelpOptions = true, description = "Time full distillation steps; last line: kd-step: <samples per second> samples/s (median).",
    footer = {"", "Example:", "  distill bench kd-step --teacher bench/specs/mlp-teacher.json --student bench/specs/mlp-student.json --batch 256 --steps 50 --device cuda"})
final class KdStepBench implements Callable<Integer> {
    @Option(names = "--teacher", required = true, paramLabel = "SPEC.json") Path teacher;
    @Option(names = "--student", required = true, paramLabel = "SPEC.json") Path student;
    @Option(names = "--batch", defaultValue = "256", description = "default: ${DEFAULT-VALUE}") int batch;
    @Option(names = "--steps", defaultValue = "50", description = "steps per timed repeat (default: ${DEFAULT-VALUE})") int steps;
    @Option(names = "--warmup", defaultValue = "10", description = "untimed steps first (default: ${DEFAULT-VALUE})") int warmup;
    @Option(names = "--repeats", defaultValue = "5", description = "timed repeats; the median is reported (default: ${DEFAULT-VALUE})") int repeats;
    @Option(names = "--temperature", defaultValue = "4", description = "default: ${DEFAULT-VALUE}") float temperature;
    @Option(names = "--alpha", defaultValue = "0.9", description = "default: ${DEFAULT-VALUE}") float alpha;
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda", description = "default: ${DEFAULT-VALUE}") String device;
    @Option(names = "--graph", defaultValue = "auto", paramLabel = "auto|on|off", description = "step graph (default: ${DEFAULT-VALUE})") String graph;
    @Option(names = "--teacher-dtype", defaultValue = "f32", paramLabel = "f32|bf16",
        description = "the frozen teacher's matrix products and convolutions in float32, or bf16 (as distill distill --teacher-dtype bf16; CPU only) "
            + "(default: ${DEFAULT-VALUE})") String teacherDtype;
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (batch < 1 || steps < 1 || repeats < 1 || warmup < 0) {
            throw new IllegalArgumentException("--batch, --steps and --repeats must be >= 1 and --warmup >= 0");
        }
        Devices.check(device);
        Trainer.GraphMode mode = Trainer.GraphMode.parse(graph);
        org.distill4j.core.DType tdt = switch (teacherDtype) {
            case "f32" -> org.distill4j.core.DType.F32;
            case "bf16" -> org.distill4j.core.DType.BF16;
            default -> throw new IllegalArgumentException("--teacher-dtype must be f32 or bf16, got '" + teacherDtype + "'");
        };
        DistillationLoss kd = DistillationLoss.hinton(temperature, alpha);
        ModelSpec ts = ModelSpec.read(teacher), ss = ModelSpec.read(student);
        PrintWriter out = spec.commandLine().getOut();
        long total = warmup + (long) repeats * steps;
        // Trainer.fit runs whole epochs: one epoch of exactly `total` batches over a repeating synthetic set.
        TrainingConfig cfg = new TrainingConfig(TrainingConfig.Optimizer.ADAMW, 1e-4f, 0f, false, 1e-4f, TrainingConfig.Schedule.CONSTANT, 0, 1, batch, 1,
            1, Integer.MAX_VALUE, 1, 0f);
        try (Backend b = Devices.open(device); Model t = ts.build(b, 1); Model s = ss.build(b, 2)) {
            Dataset train = Repeating.of(s.inputShape(), (int) s.outputShape()[0], batch * 4, total * batch, 3);
            Dataset test = Repeating.of(s.inputShape(), (int) s.outputShape()[0], batch, batch, 4);
            long[] marks = new long[repeats + 1];
            Trainer trainer = Trainer.distillation(b, s, t, kd, cfg).withTeacherDtype(tdt).graph(mode).onStep(p -> {
                long k = p.step() - warmup;
                if (k >= 0 && k % steps == 0) {
                    b.synchronize(); // the device has finished every step so far
                    marks[(int) (k / steps)] = System.nanoTime();
                }
            });
            Trainer.Result r = trainer.fit(train, test, m -> { });
            double[] rates = new double[repeats];
            for (int i = 0; i < repeats; i++) rates[i] = (double) steps * batch / ((marks[i + 1] - marks[i]) / 1e9);
            double[] sorted = rates.clone();
            Arrays.sort(sorted);
            double median = repeats % 2 == 1 ? sorted[repeats / 2] : (sorted[repeats / 2 - 1] + sorted[repeats / 2]) / 2;
            out.printf(Locale.ROOT, "teacher %s (%,d parameters, %s), student %s (%,d parameters), batch %d, %s, step graph %s%n", teacher, t.parameterCount(),
                tdt == org.distill4j.core.DType.BF16 ? "bf16" : "float32", student, s.parameterCount(), batch, b.name(), r.graphed());
            out.printf(Locale.ROOT, "%d warm-up steps, %d repeats x %d steps: %s samples/s; spread %.1f-%.1f (%.1f%%)%n", warmup, repeats, steps,
                Arrays.toString(Arrays.stream(rates).map(v -> Math.round(v * 10) / 10.0).toArray()), sorted[0], sorted[repeats - 1],
                100 * (sorted[repeats - 1] - sorted[0]) / median);
            out.printf(Locale.ROOT, "median step %.3f ms%n", batch / median * 1e3);
            if (b instanceof org.distill4j.core.cuda.CudaBackend cuda) {
                out.printf(Locale.ROOT, "peak device memory %.1f MiB%n", cuda.poolBytesPeak() / 1048576.0);
            }
            out.printf(Locale.ROOT, "kd-step: %.1f samples/s%n", median);
        }
        return 0;
    }

    /** {@code size} samples cycling through {@code distinct} random ones (uniform [0, 1), random labels). */
    static final class Repeating implements Dataset {
        private final ArrayDataset base;
        private final long size;

        private Repeating(ArrayDataset base, long size) {
            this.base = base;
            this.size = size;
        }

        static Repeating of(long[] shape, int classes, int distinct, long size, long seed) {
            Random rnd = new Random(seed);
            long n = 1;
            for (long d : shape) n *= d;
            float[] x = new float[Math.toIntExact(n * distinct)];
            long[] y = new long[distinct];
            for (int i = 0; i < x.length; i++) x[i] = rnd.nextFloat();
            for (int i = 0; i < distinct; i++) y[i] = i % classes; // every class present, so the label range matches the model
            return new Repeating(new ArrayDataset(x, y, shape), size);
        }

        @Override public long size() { return size; }
        @Override public long[] sampleShape() { return base.sampleShape(); }
        @Override public int classes() { return base.classes(); }
        @Override public void sample(long index, MemorySegment dst, long at) { base.sample(index % base.size(), dst, at); }
        @Override public long label(long index) { return base.label(index % base.size()); }
        @Override public void close() {}
    }
}
