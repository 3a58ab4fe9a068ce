package org.distill4j.cli;

import java.io.PrintWriter;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.Trainer;
import org.distill4j.core.train.TrainingConfig;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill demo}: knowledge distillation in one minute, with nothing to download. A teacher
 * is trained on a synthetic task generated in code, then the same small student is trained twice,
 * without and with distillation, and the three are compared on a clean test set.
 */
@Command(name = "demo", mixinStandardHelpOptions = true,
    description = "Train a teacher, then the same small student without and with knowledge distillation, on a synthetic task generated "
        + "in code (no downloads), and compare them. Uses the GPU when there is one.",
    footer = {"", "Example:", "  distill demo", "  distill demo --device cpu --seed 7"})
final class DemoCommand implements Callable<Integer> {
    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda", description = "default: the GPU when there is one")
    String device;

    @Option(names = "--seed", defaultValue = "20261122", description = "seed of the task, the initialisation and the shuffling")
    long seed;

    @Option(names = "--out", defaultValue = "distill-demo", paramLabel = "DIR", description = "metrics.jsonl and curves.png of each run go here (default: ${DEFAULT-VALUE})")
    java.nio.file.Path out;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    static final String TEACHER = "{\"input\": [48], \"layers\": [{\"type\": \"linear\", \"in\": 48, \"out\": 256}, {\"type\": \"relu\"},"
        + "{\"type\": \"dropout\", \"p\": 0.3}, {\"type\": \"linear\", \"in\": 256, \"out\": 256}, {\"type\": \"relu\"}, {\"type\": \"dropout\", \"p\": 0.3},"
        + "{\"type\": \"linear\", \"in\": 256, \"out\": 10}]}";
    static final String STUDENT = "{\"input\": [48], \"layers\": [{\"type\": \"linear\", \"in\": 48, \"out\": 64}, {\"type\": \"relu\"},"
        + "{\"type\": \"linear\", \"in\": 64, \"out\": 10}]}";

    @Override
    public Integer call() throws java.io.IOException {
        if (!device.equals("auto") && !device.equals("cpu") && !device.equals("cuda")) {
            throw new IllegalArgumentException("--device must be auto, cpu or cuda, got '" + device + "'");
        }
        PrintWriter out = spec.commandLine().getOut();
        java.nio.file.Files.createDirectories(this.out);
        Backend backend = backend(out);
        try (backend) {
            Synthetic.Task task = Synthetic.task(seed, 48, 10, 4, 1.0f, 1.35f);
            ArrayDataset train = task.sample(6000, seed + 1, 0.25f), test = task.sample(4000, seed + 2, 0f);
            out.println("task: 10 classes x 4 Gaussian clusters in 48 dimensions, 6,000 training samples (25% of labels flipped), 4,000 clean test samples");
            TrainingConfig teacherCfg = new TrainingConfig(TrainingConfig.Optimizer.ADAMW, 1e-3f, 0f, false, 1e-4f, TrainingConfig.Schedule.COSINE, 0,
                30, 128, seed, 3, 10, 1, 0f);
            TrainingConfig studentCfg = new TrainingConfig(TrainingConfig.Optimizer.ADAMW, 3e-3f, 0f, false, 1e-4f, TrainingConfig.Schedule.COSINE, 0,
                30, 128, seed + 5, 3, 10, 1, 0f);
            try (Model teacher = ModelSpec.parse("demo teacher", TEACHER).build(backend, seed);
                 Model baseline = ModelSpec.parse("demo student", STUDENT).build(backend, seed + 3);
                 Model student = ModelSpec.parse("demo student", STUDENT).build(backend, seed + 3)) {
                Trainer.Result t = run(out, "teacher", () -> Trainer.supervised(backend, teacher, teacherCfg).fit(train, test, m -> { }));
                Trainer.Result b = run(out, "student, no KD", () -> Trainer.supervised(backend, baseline, studentCfg).fit(train, test, m -> { }));
                DistillationLoss kd = DistillationLoss.hinton(4f, 0.9f);
                Trainer.Result k = run(out, "student, KD", () -> Trainer.distillation(backend, student, teacher, kd, studentCfg).fit(train, test, m -> { }));
                record("teacher", t);
                record("student-no-kd", b);
                record("student-kd", k);
                out.println();
                out.printf("%-16s %10s %14s %10s %12s%n", "model", "parameters", "test accuracy", "time", "samples/s");
                row(out, "teacher", teacher, t);
                row(out, "student, no KD", baseline, b);
                row(out, "student, KD", student, k);
                out.println();
                out.printf("KD (T = 4, alpha = 0.9) moved the student from %.2f%% to %.2f%% test accuracy (%+.2f points) on %s.%n",
                    100 * b.testAccuracy(), 100 * k.testAccuracy(), 100 * (k.testAccuracy() - b.testAccuracy()), backend.name());
                out.println("metrics.jsonl and curves.png of each run: " + this.out.toAbsolutePath());
            }
        }
        return 0;
    }

    /** DIR/NAME/metrics.jsonl and DIR/NAME/curves.png for one run. */
    private void record(String name, Trainer.Result r) throws java.io.IOException {
        java.nio.file.Path dir = out.resolve(name);
        java.nio.file.Files.createDirectories(dir);
        com.fasterxml.jackson.databind.ObjectMapper json = new com.fasterxml.jackson.databind.ObjectMapper();
        StringBuilder lines = new StringBuilder();
        for (Trainer.Metrics m : r.history()) lines.append(json.writeValueAsString(m)).append('\n');
        java.nio.file.Path tmp = org.distill4j.core.io.AtomicFiles.temporaryFor(dir.resolve("metrics.jsonl"));
        java.nio.file.Files.writeString(tmp, lines);
        org.distill4j.core.io.AtomicFiles.publish(tmp, dir.resolve("metrics.jsonl"));
        Curves.write(dir.resolve("curves.png"), "demo: " + name, r.history());
    }

    private Backend backend(PrintWriter out) {
        if (device.equals("cpu")) return CpuBackend.get();
        try {
            return CudaBackend.create(0);
        } catch (BackendUnavailableException e) {
            if (device.equals("cuda")) throw e;
            out.println("device: cpu (" + e.getMessage().lines().findFirst().orElse("") .replaceAll("(.{120}).+", "$1...") + ")");
            return CpuBackend.get();
        }
    }

    private static Trainer.Result run(PrintWriter out, String name, java.util.function.Supplier<Trainer.Result> training) {
        out.print("training " + name + "... ");
        out.flush();
        Trainer.Result r = training.get();
        out.printf("%.2f%% test accuracy in %.1f s%n", 100 * r.testAccuracy(), r.seconds());
        return r;
    }

    private static void row(PrintWriter out, String name, Model m, Trainer.Result r) {
        out.printf("%-16s %,10d %13.2f%% %9.1fs %,12.0f%n", name, m.parameterCount(), 100 * r.testAccuracy(), r.seconds(), r.samplesPerSecond());
    }
}
