package org.distill4j.cli;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.infer.Predictor;
import org.distill4j.core.io.Npy;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code distill predict}: eval-mode logits of a model for a float32 .npy batch. */
@Command(name = "predict", mixinStandardHelpOptions = true,
    description = "Run a model (spec + safetensors weights, PyTorch state_dict names) in eval mode on float32 inputs [N, ...input shape] "
        + "and write float32 outputs [N, ...output shape]; or a Hugging Face decoder folder (gpt2, llama, mistral, qwen2, qwen3) on token ids [B, T], "
        + "writing logits [B, T, vocabulary].",
    footer = {"", "Examples:", "  distill predict --model cnn.json --weights cnn.safetensors --input x.npy --output logits.npy --batch 256",
        "  distill predict --model ./gpt2 --input tokens.npy --output logits.npy"})
final class PredictCommand implements Callable<Integer> {
    @Option(names = "--model", required = true, paramLabel = "SPEC.json|DIR",
        description = "model spec (docs/model-spec.md), or a Hugging Face decoder folder (config.json + model.safetensors or shards)")
    Path model;

    @Option(names = "--weights", paramLabel = "W.safetensors", description = "weights with PyTorch state_dict names (a spec needs them; a folder has its own)")
    Path weights;

    @Option(names = "--input", required = true, paramLabel = "X.npy", description = "float32 [N, ...input shape]; for a decoder folder token ids int32/int64 [B, T]")
    Path input;

    @Option(names = "--output", required = true, paramLabel = "OUT.npy",
        description = "written float32 [N, ...output shape] (for a decoder: logits [B, T, vocabulary]), atomically")
    Path output;

    @Option(names = "--batch", defaultValue = "256", description = "rows per forward pass (default: ${DEFAULT-VALUE})")
    int batch;

    @Option(names = "--dtype", defaultValue = "f32", paramLabel = "f32|bf16|stored",
        description = "float32, or bf16 matrix products (bf16 weights and inputs, float32 sums; the oneDNN engine and CUDA (decoders) run them "
            + "natively, the other CPU engines in an exact but slow Java loop; model specs: convolutions too, CPU only), or stored: decoders, bf16 "
            + "for a checkpoint stored in bf16 where that is native; model specs, f32 (their weights are float32) (default: ${DEFAULT-VALUE})") String dtype;
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda", description = "where to compute (default: ${DEFAULT-VALUE})")
    String device;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (batch < 1) throw new IllegalArgumentException("--batch must be >= 1, got " + batch);
        Devices.check(device);
        if (java.nio.file.Files.isDirectory(model)) return predictDecoder();
        if (weights == null) throw new IllegalArgumentException("--weights is required with a model spec (" + model + " is not a folder)");
        // A model spec's weights are float32 (Model.load takes the spec's F32 tensors only), so stored is f32.
        boolean bf16 = DecoderDtype.parse("--dtype", dtype) == DecoderDtype.BF16;
        if (bf16 && !"cpu".equals(device)) throw new IllegalArgumentException("--dtype bf16 with a model spec runs on the CPU only so far, not --device " + device);
        ModelSpec s = ModelSpec.read(model);
        Npy.Array x = Npy.read(input);
        if (x.type() != Npy.Type.F32) throw new IllegalArgumentException(input + ": inputs must be float32, got " + x.type().name().toLowerCase(java.util.Locale.ROOT));
        long[] expected = s.input();
        if (x.shape().length != expected.length + 1 || !Arrays.equals(Arrays.copyOfRange(x.shape(), 1, x.shape().length), expected)) {
            throw new IllegalArgumentException(input + ": shape " + Arrays.toString(x.shape()) + ", the model takes [N, " + Arrays.toString(expected).substring(1));
        }
        float[] values = x.toFloats();
        long n = x.shape()[0], perRow = values.length / Math.max(1, n);
        try (Backend b = Devices.open(device); Model m = s.build(b, 0)) {
            m.load(weights);
            long outPerRow = Tensor.numel(m.outputShape());
            float[] out = new float[(int) (n * outPerRow)];
            boolean planned = bf16 || b.isHost();
            if (planned) {
                // On the CPU, the Predictor's compiled plan (what a service embedding the model runs, so both give the same
                // numbers): float32, or bf16 weights and inputs of every matrix product and convolution with float32 sums
                // (the eval forward of Model has no bf16 path). One workspace; the gemm engine keeps its own threads.
                Predictor.Options options = new Predictor.Options(batch, false, 0, 0, 1, 1).withComputeDtype(bf16 ? DType.BF16 : DType.F32);
                try (Predictor p = Predictor.of(m, options)) {
                    p.predict(values, out);
                }
            }
            // CUDA: the eval forward, --batch rows at a time (skipped when the plan computed them above).
            for (long start = planned ? n : 0; start < n; start += batch) {
                long rows = Math.min(batch, n - start);
                long[] shape = new long[expected.length + 1];
                shape[0] = rows;
                System.arraycopy(expected, 0, shape, 1, expected.length);
                try (Arena arena = Arena.ofShared();
                     Tensor t = b.fromArray(Arrays.copyOfRange(values, (int) (start * perRow), (int) ((start + rows) * perRow)), shape)) {
                    float[] y = m.forward(new Layer.Pass(b, arena, false, 0, 0), t).toFloatArray();
                    System.arraycopy(y, 0, out, (int) (start * outPerRow), y.length);
                }
            }
            long[] outShape = new long[m.outputShape().length + 1];
            outShape[0] = n;
            System.arraycopy(m.outputShape(), 0, outShape, 1, m.outputShape().length);
            Npy.writeFloats(output, out, outShape);
            spec.commandLine().getOut().println("wrote " + output + ": float32 " + Arrays.toString(outShape) + " (" + n + " rows on " + b.name()
                + (bf16 ? ", bf16 matrix products" : "") + ")");
        }
        return 0;
    }

    /**
     * A Hugging Face decoder folder: eval-mode logits [B, T, V] for token ids [B, T], --batch rows
     * per forward. Everything is checked (ids in the vocabulary, the length against the model's
     * limits) before the output is written, once, atomically.
     */
    private int predictDecoder() throws Exception {
        if (weights != null) throw new IllegalArgumentException("--weights is not used with a model folder (" + model + " holds its weights)");
        Npy.Array x = Npy.read(input);
        if (x.type() != Npy.Type.I64 && x.type() != Npy.Type.I32) {
            throw new IllegalArgumentException(input + ": token ids must be int32 or int64, got " + x.type().name().toLowerCase(java.util.Locale.ROOT));
        }
        if (x.shape().length != 2 || x.shape()[0] < 1 || x.shape()[1] < 1) {
            throw new IllegalArgumentException(input + ": token ids must be [B, T] with B, T >= 1, got " + Arrays.toString(x.shape()));
        }
        long[] ids = x.toLongs(input.toString());
        int rowsTotal = Math.toIntExact(x.shape()[0]);
        long t = x.shape()[1];
        try (Backend b = Devices.openForDecoder(device); DecoderModel m = DecoderDtype.parse("--dtype", dtype).load(b, model)) {
            long vocab = m.config().vocab();
            for (int i = 0; i < ids.length; i++) {
                if (ids[i] < 0 || ids[i] >= vocab) {
                    throw new IllegalArgumentException(input + ": token id " + ids[i] + " at [" + i / t + ", " + i % t + "] is outside the vocabulary [0, " + vocab
                        + ") of " + model);
                }
            }
            float[] out = new float[Math.toIntExact(Math.multiplyExact(ids.length, vocab))];
            for (int start = 0; start < rowsTotal; start += batch) {
                int rows = Math.min(batch, rowsTotal - start);
                long[] chunk = Arrays.copyOfRange(ids, (int) (start * t), (int) ((start + rows) * t));
                try (Arena arena = Arena.ofShared()) {
                    float[] y = m.forward(new Layer.Pass(b, arena, false, 0, 0), chunk, rows, t, null, null, null).toFloatArray();
                    System.arraycopy(y, 0, out, (int) (start * t * vocab), y.length);
                }
            }
            long[] shape = {rowsTotal, t, vocab};
            Npy.writeFloats(output, out, shape);
            spec.commandLine().getOut().println("wrote " + output + ": float32 " + Arrays.toString(shape) + " (" + m.config().family().modelType() + ", "
                + rowsTotal + " sequences of " + t + " tokens on " + b.name() + ")");
        }
        return 0;
    }
}
