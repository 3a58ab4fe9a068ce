package org.distill4j.cli;

import java.nio.file.Path;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.Trainer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code distill distill}: train a student from a frozen teacher with the fused distillation loss. */
@Command(name = "distill", mixinStandardHelpOptions = true,
    description = "Train a student from a frozen teacher (eval mode, forward only) with alpha*T^2*D(p_t, p_s) + (1-alpha)*CE.",
    footer = {"", "Example:", "  distill distill --teacher teacher.json --teacher-weights runs/teacher/model.safetensors --student student.json \\",
        "      --temperature 4 --alpha 0.9 --data idx:TRAIN_IMAGES,TRAIN_LABELS --test-data idx:TEST_IMAGES,TEST_LABELS --out runs/student-kd"})
final class DistillCommand implements Callable<Integer> {
    @Option(names = "--teacher", required = true, paramLabel = "SPEC.json") Path teacher;
    @Option(names = "--teacher-weights", required = true, paramLabel = "W.safetensors") Path teacherWeights;
    @Option(names = "--student", required = true, paramLabel = "SPEC.json") Path student;
    @Option(names = "--divergence", defaultValue = "kl", paramLabel = "kl|reverse-kl|jsd|mse", description = "default: ${DEFAULT-VALUE}") String divergence;
    @Option(names = "--temperature", defaultValue = "4", description = "default: ${DEFAULT-VALUE}") float temperature;
    @Option(names = "--alpha", defaultValue = "0.9", description = "weight of the soft term (default: ${DEFAULT-VALUE})") float alpha;
    @Option(names = "--beta", defaultValue = "0.5", description = "JSD mixture weight (default: ${DEFAULT-VALUE})") float beta;
    @CommandLine.Mixin TrainingOptions options;
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        var cfg = options.config();
        DistillationLoss kd = new DistillationLoss(Divergence.parse(divergence), temperature, alpha, beta, -100);
        ModelSpec ts = ModelSpec.read(teacher), ss = ModelSpec.read(student);
        try (Dataset train = options.train(); Dataset test = options.test(); Backend b = options.backend(); Model t = ts.build(b, 0);
             Model s = ss.build(b, cfg.seed())) {
            Trainer trainer = Trainer.distillation(b, s, t, kd, cfg); // checks the teacher fits the student before anything loads
            t.load(teacherWeights);
            options.run(trainer, s, train, test, spec.commandLine().getOut());
        }
        return 0;
    }
}
