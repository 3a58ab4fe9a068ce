package org.distill4j.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Locale;
import java.util.Random;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.nn.Layer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill bench lm-step}: times a decoder's training step without the optimizer: forward in
 * training mode with dropout off, transformers' mean next-token cross-entropy, backward into every
 * gradient (zeroed first). Random token ids [B, T] (fixed seed) and a model initialised by
 * {@link DecoderModel#fromConfig} (random weights: the time does not depend on them). After
 * {@code warmup} steps, {@code repeats} runs of {@code steps} steps are timed; the last line is the
 * median rate. Each step's activations live in one arena, closed after the backward, as a training
 * loop would; dL/dlogits is written over the logits (DecoderModel#nextTokenLoss allows it). The same step in PyTorch eager is bench/pytorch/lm_step.py.
 */
@Command(name = "lm-step", mixinStandardHelpOptions = true,
    description = "Time decoder forward+backward steps (no optimizer); last line: lm-step: <tokens per second> tokens/s (median).",
    footer = {"", "Example:", "  distill bench lm-step --config gpt2-small --seq-len 256 --batch 1 --steps 2 --repeats 3"})
final class LmStepBench implements Callable<Integer> {
    @Option(names = "--model", paramLabel = "DIR", description = "a Hugging Face folder (only config.json is read: weights are initialised at random)") Path model;
    @Option(names = "--config", paramLabel = "gpt2-small", description = "a built-in config instead of --model: gpt2-small (768 wide, 12 heads, 12 layers, "
        + "vocabulary 50257, 1024 positions, dropout 0)") String preset;
    @Option(names = "--layers", defaultValue = "0", description = "with --config: layers (default: the preset's 12)") int layers;
    @Option(names = "--seq-len", defaultValue = "256", description = "T (default: ${DEFAULT-VALUE})") long seqLen;
    @Option(names = "--batch", defaultValue = "1", description = "B (default: ${DEFAULT-VALUE})") int batch;
    @Option(names = "--steps", defaultValue = "2", description = "steps per timed repeat (default: ${DEFAULT-VALUE})") int steps;
    @Option(names = "--warmup", defaultValue = "2", description = "untimed steps first (default: ${DEFAULT-VALUE})") int warmup;
    @Option(names = "--repeats", defaultValue = "3", description = "timed repeats; the median is reported (default: ${DEFAULT-VALUE})") int repeats;
    @Option(names = "--profile", description = "print each op's share of the timed steps (DecoderProfile)") boolean profile;
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    /** GPT-2 small's config.json as transformers' GPT2Config() writes it, with dropout 0 (the step is timed with dropout off). */
    static String gpt2Small(int layers) {
        return """
            {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": %d,
             "n_head": 12, "n_inner": null, "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
             "layer_norm_epsilon": 1e-05, "initializer_range": 0.02, "scale_attn_weights": true, "scale_attn_by_inverse_layer_idx": false,
             "reorder_and_upcast_attn": false, "tie_word_embeddings": true, "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "float32"}
            """.formatted(layers);
    }

    @Override
    public Integer call() throws Exception {
        if (batch < 1 || steps < 1 || repeats < 1 || warmup < 0 || seqLen < 2) {
            throw new IllegalArgumentException("--batch, --steps and --repeats must be >= 1, --warmup >= 0 and --seq-len >= 2");
        }
        if ((model == null) == (preset == null)) throw new IllegalArgumentException("give either --model DIR or --config gpt2-small");
        Path dir = model;
        Path temp = null;
        if (preset != null) {
            if (!preset.equals("gpt2-small")) throw new IllegalArgumentException("--config: unknown preset '" + preset + "', expected gpt2-small");
            temp = Files.createTempDirectory("distill-lm-step");
            dir = temp;
            Files.writeString(dir.resolve("config.json"), gpt2Small(layers > 0 ? layers : 12));
        } else if (layers != 0) {
            throw new IllegalArgumentException("--layers goes with --config; edit the folder's config.json instead");
        }
        PrintWriter out = spec.commandLine().getOut();
        try (Backend b = Devices.open("cpu"); DecoderModel m = DecoderModel.fromConfig(b, dir, 1)) {
            m.setDropout(false);
            long vocab = m.config().vocab();
            Random rnd = new Random(7);
            long[] ids = new long[Math.toIntExact(batch * seqLen)];
            for (int i = 0; i < ids.length; i++) ids[i] = rnd.nextLong(vocab);
            double[] rates = new double[repeats];
            double lastLoss = Double.NaN;
            for (int w = 0; w < warmup; w++) lastLoss = step(b, m, ids, batch, seqLen, w);
            if (profile) org.distill4j.core.lm.DecoderProfile.reset(true);
            for (int r = 0; r < repeats; r++) {
                long t0 = System.nanoTime();
                for (int s = 0; s < steps; s++) lastLoss = step(b, m, ids, batch, seqLen, warmup + (long) r * steps + s);
                rates[r] = (double) steps * batch * seqLen / ((System.nanoTime() - t0) / 1e9);
            }
            double[] sorted = rates.clone();
            Arrays.sort(sorted);
            double median = repeats % 2 == 1 ? sorted[repeats / 2] : (sorted[repeats / 2 - 1] + sorted[repeats / 2]) / 2;
            out.printf(Locale.ROOT, "%s: %s, %d layers, hidden %d, %d heads, vocabulary %d (%,d parameters); B %d, T %d; loss %.4f%n", dir,
                m.config().family().modelType(), m.config().layers(), m.config().hidden(), m.config().heads(), vocab, m.parameterCount(), batch, seqLen, lastLoss);
            out.printf(Locale.ROOT, "threads: %d fork-join (common pool parallelism %d + caller); gemm: %s%n",
                java.util.concurrent.ForkJoinPool.getCommonPoolParallelism() + 1, java.util.concurrent.ForkJoinPool.getCommonPoolParallelism(), CpuBlas.provider());
            if (profile) org.distill4j.core.lm.DecoderProfile.print(out);
            out.printf(Locale.ROOT, "%d warm-up steps, %d repeats x %d steps: %s tokens/s; spread %.1f-%.1f (%.1f%%)%n", warmup, repeats, steps,
                Arrays.toString(Arrays.stream(rates).map(v -> Math.round(v * 10) / 10.0).toArray()), sorted[0], sorted[repeats - 1],
                100 * (sorted[repeats - 1] - sorted[0]) / median);
            out.printf(Locale.ROOT, "median step %.1f ms; peak RSS %s%n", batch * seqLen / median * 1e3, peakRss());
            out.printf(Locale.ROOT, "lm-step: %.1f tokens/s%n", median);
        } finally {
            if (temp != null) {
                Files.deleteIfExists(temp.resolve("config.json"));
                Files.deleteIfExists(temp);
            }
        }
        return 0;
    }

    /** One step: zero the gradients, forward (training mode, dropout off), loss and dlogits, backward; the step's activations go with its arena. */
    private static double step(Backend b, DecoderModel m, long[] ids, int batch, long t, long step) {
        m.zeroGrad();
        try (Arena arena = Arena.ofShared()) {
            Layer.Pass pass = new Layer.Pass(b, arena, true, 11, step);
            Tensor logits = m.forward(pass, ids, batch, t, null, null, null);
            // dL/dlogits overwrites the logits (nothing reads them after the loss): one [B, T, V] buffer, not two.
            double loss = DecoderModel.nextTokenLoss(logits, ids, logits);
            m.backward(logits);
            return loss;
        }
    }

    /** VmHWM from /proc/self/status (Linux), or "n/a". */
    static String peakRss() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith("VmHWM:")) {
                    long kb = Long.parseLong(line.replaceAll("[^0-9]", ""));
                    return String.format(Locale.ROOT, "%.1f MiB", kb / 1024.0);
                }
            }
        } catch (IOException | RuntimeException e) {
            return "n/a (" + e.getMessage() + ")";
        }
        return "n/a";
    }
}
