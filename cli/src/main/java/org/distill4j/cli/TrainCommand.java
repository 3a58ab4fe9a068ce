package org.distill4j.cli;

import java.nio.file.Path;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.Trainer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code distill train}: supervised training of a model (teachers and no-KD baselines). */
@Command(name = "train", mixinStandardHelpOptions = true, description = "Train a model (a spec, or a Hugging Face decoder folder on next-token cross-entropy): teachers, no-KD baselines.",
    footer = {"", "Example:", "  distill train --model teacher.json --data idx:data/mnist/train-images-idx3-ubyte,data/mnist/train-labels-idx1-ubyte \\",
        "      --test-data idx:data/mnist/test-images-idx3-ubyte,data/mnist/test-labels-idx1-ubyte --epochs 20 --out runs/teacher",
        "  distill train --model examples/lm/teacher --data tokens:data/lm/train.bin --test-data tokens:data/lm/val.bin --seq-len 128 \\",
        "      --batch 8 --lr 1e-3 --warmup 20 --max-steps 400 --tokenizer data/lm/gpt2 --out runs/lm/teacher"})
final class TrainCommand implements Callable<Integer> {
    @Option(names = "--model", required = true, paramLabel = "SPEC.json|DIR",
        description = "a model spec, or a Hugging Face decoder folder (config.json, and model.safetensors to start from; without weights a new model)") Path model;
    @Option(names = "--init-weights", paramLabel = "W.safetensors", description = "start from these weights instead of a fresh initialisation") Path init;
    @CommandLine.Mixin TrainingOptions options;
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (java.nio.file.Files.isDirectory(model)) {
            if (init != null) throw new IllegalArgumentException("--init-weights is for a model spec; a decoder folder starts from its own model.safetensors");
            DecoderTraining.train(options, model, spec.commandLine().getOut());
            return 0;
        }
        var cfg = options.config();
        ModelSpec s = ModelSpec.read(model);
        try (Dataset train = options.train(); Dataset test = options.test(); Backend b = options.backend(); Model m = s.build(b, cfg.seed())) {
            if (init != null) m.load(init);
            Trainer t = Trainer.supervised(b, m, cfg);
            options.run(t, m, train, test, spec.commandLine().getOut());
        }
        return 0;
    }
}
