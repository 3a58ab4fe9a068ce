package org.distill4j.cli;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.data.DataSpec;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.Trainer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code distill eval}: accuracy and mean cross-entropy of a model on a labelled set, in eval mode. */
@Command(name = "eval", mixinStandardHelpOptions = true,
    description = "Accuracy and mean cross-entropy loss of a model (spec + safetensors weights) on a labelled dataset, in eval mode.",
    footer = {"", "Data (docs/data.md): idx:IMAGES,LABELS | cifar10:BATCH[,BATCH...] | npy:SAMPLES.npy,LABELS.npy", "",
        "Example:", "  distill eval --model mlp.json --weights mlp.safetensors --data idx:data/mnist/test-images-idx3-ubyte,data/mnist/test-labels-idx1-ubyte"})
final class EvalCommand implements Callable<Integer> {
    @Option(names = "--model", required = true, paramLabel = "SPEC.json") Path model;
    @Option(names = "--weights", required = true, paramLabel = "W.safetensors") Path weights;
    @Option(names = "--data", required = true, paramLabel = "KIND:FILES", description = "labelled data, see below") String data;
    @Option(names = "--batch", defaultValue = "256", description = "rows per forward pass (default: ${DEFAULT-VALUE})") int batch;
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda", description = "where to compute (default: ${DEFAULT-VALUE})") String device;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (batch < 1) throw new IllegalArgumentException("--batch must be >= 1, got " + batch);
        Devices.check(device);
        ModelSpec s = ModelSpec.read(model);
        try (Dataset d = DataSpec.open(data)) {
            if (!Arrays.equals(d.sampleShape(), s.input())) {
                throw new IllegalArgumentException("data " + data + ": samples are " + Arrays.toString(d.sampleShape()) + ", the model takes " + Arrays.toString(s.input()));
            }
            try (Backend b = Devices.open(device); Model m = s.build(b, 0)) {
                m.load(weights);
                long classes = m.outputShape()[m.outputShape().length - 1];
                if (m.outputShape().length != 1 || d.classes() > classes) {
                    throw new IllegalArgumentException("data " + data + ": labels reach class " + (d.classes() - 1) + " but the model outputs "
                        + Arrays.toString(m.outputShape()));
                }
                double[] lossAndAccuracy = Trainer.evaluate(b, m, d, batch); // the trainer's own evaluation
                long n = d.size(), c = Math.round(lossAndAccuracy[1] * n);
                var out = spec.commandLine().getOut();
                out.printf("accuracy %.2f%% (%d of %d), loss %.6f%n", 100.0 * c / n, c, n, lossAndAccuracy[0]);
            }
        }
        return 0;
    }
}
