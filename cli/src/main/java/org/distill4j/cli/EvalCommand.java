package org.distill4j.cli;

import java.io.PrintWriter;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.data.DataSpec;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.data.TokenWindows;
import org.distill4j.core.Tensor;
import org.distill4j.core.lm.DecoderConfig;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.Trainer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill eval}: accuracy and mean cross-entropy of a model on a labelled set, in eval mode; or, for a Hugging
 * Face decoder folder, the mean next-token cross-entropy and perplexity over a token file's windows.
 */
@Command(name = "eval", mixinStandardHelpOptions = true,
    description = {"Accuracy and mean cross-entropy loss of a model (spec + safetensors weights) on a labelled dataset, in eval mode;",
        "or, for a Hugging Face decoder folder, the mean next-token cross-entropy over --data tokens:FILE --seq-len T",
        "(window i = tokens[iT .. iT+T]: T inputs, T targets; a last partial window dropped), ending with the line",
        "'eval: loss <mean>, perplexity <exp(mean)>, tokens <targets scored>'."},
    footer = {"", "Data (docs/data.md): idx:IMAGES,LABELS | cifar10:BATCH[,BATCH...] | npy:SAMPLES.npy,LABELS.npy | tokens:FILE (.bin or .npy, decoders)", "",
        "Examples:", "  distill eval --model mlp.json --weights mlp.safetensors --data idx:data/mnist/test-images-idx3-ubyte,data/mnist/test-labels-idx1-ubyte",
        "  distill eval --model ./student --data tokens:val.bin --seq-len 256 --batch 8"})
final class EvalCommand implements Callable<Integer> {
    @Option(names = "--model", required = true, paramLabel = "SPEC.json|DIR", description = "model spec, or a Hugging Face decoder folder") Path model;
    @Option(names = "--weights", paramLabel = "W.safetensors", description = "weights of a model spec (a folder has its own)") Path weights;
    @Option(names = "--data", required = true, paramLabel = "KIND:FILES", description = "labelled data, or tokens:FILE for a decoder; see below") String data;
    @Option(names = "--batch", description = "rows (decoder: windows) per forward pass (default: 256; decoder: 8)") Integer batch;
    @Option(names = "--seq-len", paramLabel = "T", description = "tokens per window (decoders)") Integer seqLen;
    @Option(names = "--dtype", defaultValue = "f32", paramLabel = "f32|bf16|stored",
        description = "decoders: float32, or bf16 matrix products (bf16 weights and inputs, float32 sums; the oneDNN engine and CUDA run them natively), "
            + "or stored: bf16 for a checkpoint stored in bf16 where that is native (default: ${DEFAULT-VALUE})") String dtype;
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda", description = "where to compute (default: ${DEFAULT-VALUE})") String device;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (batch != null && batch < 1) throw new IllegalArgumentException("--batch must be >= 1, got " + batch);
        Devices.check(device);
        if (Files.isDirectory(model)) return evalDecoder();
        if (weights == null) throw new IllegalArgumentException("--weights is required with a model spec (" + model + " is not a folder)");
        if (!"f32".equals(dtype)) throw new IllegalArgumentException("--dtype " + dtype + " is for decoder folders; a model spec runs in float32");
        if (seqLen != null) throw new IllegalArgumentException("--seq-len is for a decoder folder (" + model + " is not a folder)");
        int batch = this.batch == null ? 256 : this.batch;
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

    /**
     * A decoder folder on tokens:FILE: every window's T inputs forwarded as [B, T] (eval mode, no cache, positions
     * 0..T-1) and its T targets scored, so the mean is over windows * T target tokens. The cross-entropy is computed here
     * in double from the F32 logits (log-sum-exp minus the target's logit), not with {@link DecoderModel#nextTokenLoss},
     * which scores T-1 shifted targets of a T-token sequence.
     */
    private int evalDecoder() throws Exception {
        if (weights != null) throw new IllegalArgumentException("--weights is not used with a model folder (" + model + " holds its weights)");
        if (!data.startsWith("tokens:")) throw new IllegalArgumentException("--data " + data + ": a decoder folder is evaluated on tokens:FILE (an llm.c .bin or 1-D .npy)");
        if (seqLen == null) throw new IllegalArgumentException("--seq-len T is required with a decoder folder");
        int windowsPerBatch = batch == null ? 8 : batch;
        DecoderConfig config = DecoderConfig.read(model);
        if (seqLen > config.maxPositions()) {
            throw new IllegalArgumentException("--seq-len " + seqLen + " is longer than the context of " + config.file() + " ('"
                + (config.rope() == null ? "n_positions" : "max_position_embeddings") + "' = " + config.maxPositions() + ")");
        }
        Path file = Path.of(data.substring("tokens:".length()));
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        try (TokenWindows windows = TokenWindows.open(file, seqLen, Math.toIntExact(config.vocab()));
             Backend b = Devices.openForDecoder(device); DecoderModel m = DecoderDtype.parse("--dtype", dtype).load(b, model)) {
            long[] order = windows.order(0, 0, false);
            long batches = windows.batchesPerEpoch(windowsPerBatch, false);
            long[] inputs = new long[windowsPerBatch * seqLen], targets = new long[windowsPerBatch * seqLen];
            ProgressLine progress = ProgressLine.forTerminal(err);
            double sum = 0;
            long scored = 0;
            for (long bi = 0; bi < batches; bi++) {
                int rows = windows.batch(order, bi, windowsPerBatch, inputs, targets);
                int n = rows * seqLen;
                try (Arena arena = Arena.ofShared()) {
                    Tensor logits = m.forward(new Layer.Pass(b, arena, false, 0, 0), Arrays.copyOf(inputs, n), rows, seqLen, null, null, null); // [rows, T, V]
                    MemorySegment host = logits.data();
                    if (!b.isHost()) { // the logits are on the GPU: one copy to host memory for the double-precision sum
                        host = arena.allocate(logits.byteSize(), 16);
                        b.copyToHost(logits, host);
                    }
                    sum += crossEntropySum(host, Arrays.copyOf(targets, n), config.vocab());
                }
                scored += n;
                progress.show(String.format("eval %s %d/%d windows  loss %.4f", ProgressLine.bar(bi + 1, batches, 24), Math.min((bi + 1) * windowsPerBatch,
                    windows.windows()), windows.windows(), sum / scored), bi + 1 == batches);
            }
            progress.clear();
            double mean = sum / scored;
            out.printf("eval: loss %.6f, perplexity %.4f, tokens %d%n", mean, Math.exp(mean), scored);
        }
        return 0;
    }

    /** Sum over rows r of -log softmax(logits[r])[targets[r]], in double; logits F32 [rows, V] row-major. */
    static double crossEntropySum(MemorySegment logits, long[] targets, long vocab) {
        double total = 0;
        for (int r = 0; r < targets.length; r++) {
            long base = r * vocab;
            double max = Double.NEGATIVE_INFINITY;
            for (long c = 0; c < vocab; c++) max = Math.max(max, logits.getAtIndex(ValueLayout.JAVA_FLOAT, base + c));
            double z = 0;
            for (long c = 0; c < vocab; c++) z += Math.exp(logits.getAtIndex(ValueLayout.JAVA_FLOAT, base + c) - max);
            total += max + Math.log(z) - logits.getAtIndex(ValueLayout.JAVA_FLOAT, base + targets[r]);
        }
        return total;
    }
}
