package org.distill4j.cli;

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.lm.ChunkedLmLoss;
import org.distill4j.core.lm.DecoderConfig;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.lm.DecoderProfile;
import org.distill4j.core.lm.HfCheckpoint;
import org.distill4j.core.lm.LmTrainer;
import org.distill4j.core.loss.Divergence;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.train.TrainingConfig;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill bench lm-kd-step}: times whole token-level distillation steps of
 * {@link LmTrainer#step}: teacher forward in eval mode, student forward in training mode, the
 * chunked loss (both lm_heads and the fused alpha T^2 D + (1 - alpha) CE over row chunks, never
 * [B*T, V]), the student's backward, the optimizer step and the zeroing of the gradients. One
 * micro-batch of B windows of T tokens, random ids (fixed seed) reused every step, as
 * {@code distill bench lm-step} does. Models are read from the folders (model.safetensors); a
 * folder with only config.json gets a fresh initialisation (the time does not depend on the
 * weights). After {@code warmup} steps, {@code repeats} runs of {@code steps} steps are timed;
 * the last line is the median rate. The same step in PyTorch is bench/pytorch/lm_kd_step.py.
 */
@Command(name = "lm-kd-step", mixinStandardHelpOptions = true,
    description = "Time whole decoder distillation steps (LmTrainer.step); last line: lm-kd-step: <tokens per second> tokens/s (median).",
    footer = {"", "Example:", "  distill bench lm-kd-step --teacher teacher/ --student student/ --seq-len 128 --batch 4 --steps 2 --repeats 3"})
final class LmKdStepBench implements Callable<Integer> {
    @Option(names = "--teacher", required = true, paramLabel = "DIR", description = "a Hugging Face decoder folder (config.json, model.safetensors)") Path teacher;
    @Option(names = "--student", required = true, paramLabel = "DIR", description = "a Hugging Face decoder folder (config.json; weights if any)") Path student;
    @Option(names = "--seq-len", defaultValue = "128", description = "T (default: ${DEFAULT-VALUE})") int seqLen;
    @Option(names = "--batch", defaultValue = "4", description = "B (default: ${DEFAULT-VALUE})") int batch;
    @Option(names = "--steps", defaultValue = "2", description = "steps per timed repeat (default: ${DEFAULT-VALUE})") int steps;
    @Option(names = "--warmup", defaultValue = "2", description = "untimed steps first (default: ${DEFAULT-VALUE})") int warmup;
    @Option(names = "--repeats", defaultValue = "3", description = "timed repeats; the median is reported (default: ${DEFAULT-VALUE})") int repeats;
    @Option(names = "--loss-chunk", defaultValue = "-1", paramLabel = "ROWS", description = "rows per loss chunk; 0: no chunking (the whole batch's logits at once); "
        + "-1: automatic, about 32 MiB of logits a chunk (default: ${DEFAULT-VALUE})") int lossChunk;
    @Option(names = "--divergence", defaultValue = "kl", paramLabel = "kl|reverse-kl|jsd", description = "default: ${DEFAULT-VALUE}") String divergence;
    @Option(names = "--temperature", defaultValue = "1", description = "default: ${DEFAULT-VALUE}") float temperature;
    @Option(names = "--alpha", defaultValue = "0.9", description = "default: ${DEFAULT-VALUE}") float alpha;
    @Option(names = "--beta", defaultValue = "0.5", description = "jsd's beta (default: ${DEFAULT-VALUE})") float beta;
    @Option(names = "--optimizer", defaultValue = "adamw", paramLabel = "adamw|sgd", description = "default: ${DEFAULT-VALUE}") String optimizer;
    @Option(names = "--lr", defaultValue = "1e-4", description = "default: ${DEFAULT-VALUE}") float lr;
    @Option(names = "--weight-decay", defaultValue = "0.01", description = "on matrices and embeddings only (default: ${DEFAULT-VALUE})") float weightDecay;
    @Option(names = "--seed", defaultValue = "7", description = "token ids and a fresh student's initialisation (default: ${DEFAULT-VALUE})") long seed;
    @Option(names = "--teacher-dtype", defaultValue = "f32", paramLabel = "f32|bf16",
        description = "the frozen teacher's matrix products in float32, or bf16 (as distill distill --teacher-dtype bf16) (default: ${DEFAULT-VALUE})")
    String teacherDtype;
    @Option(names = "--profile", description = "print each phase's share of the timed steps and each decoder op's time (DecoderProfile)") boolean profile;
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (batch < 1 || steps < 1 || repeats < 1 || warmup < 0 || seqLen < 1) {
            throw new IllegalArgumentException("--batch, --steps, --repeats and --seq-len must be >= 1 and --warmup >= 0");
        }
        if (lossChunk < -1) throw new IllegalArgumentException("--loss-chunk must be >= 0 rows (0: no chunking) or -1 (automatic), got " + lossChunk);
        TrainingConfig.Optimizer opt = switch (optimizer.toLowerCase(Locale.ROOT)) {
            case "adamw" -> TrainingConfig.Optimizer.ADAMW;
            case "sgd" -> TrainingConfig.Optimizer.SGD;
            default -> throw new IllegalArgumentException("--optimizer must be adamw or sgd, got '" + optimizer + "'");
        };
        DistillationLoss kd = new DistillationLoss(Divergence.parse(divergence), temperature, alpha, beta, -100);
        DecoderConfig tc = DecoderConfig.read(teacher), sc = DecoderConfig.read(student);
        for (DecoderConfig c : List.of(tc, sc)) {
            if (seqLen > c.maxPositions()) throw new IllegalArgumentException("--seq-len " + seqLen + " is longer than the context of " + c.file() + " (" + c.maxPositions() + ")");
        }
        long shared = LmTrainer.sharedVocabulary(tc, sc, 0);
        // Constant lr, no warm-up, no clipping, one micro-batch a step: the step itself is what is timed.
        TrainingConfig cfg = new TrainingConfig(opt, lr, opt == TrainingConfig.Optimizer.SGD ? 0.9f : 0f, false, weightDecay, TrainingConfig.Schedule.CONSTANT, 0, 1,
            batch, seed, 1, 1, 1, 0f);
        PrintWriter out = spec.commandLine().getOut();
        org.distill4j.core.DType tdt = switch (teacherDtype) {
            case "f32" -> org.distill4j.core.DType.F32;
            case "bf16" -> org.distill4j.core.DType.BF16;
            default -> throw new IllegalArgumentException("--teacher-dtype must be f32 or bf16, got '" + teacherDtype + "'");
        };
        if (tdt == org.distill4j.core.DType.BF16 && !HfCheckpoint.hasWeights(teacher)) throw new IllegalArgumentException("--teacher-dtype bf16 needs a teacher with weights");
        try (Backend b = Devices.open("cpu"); DecoderModel t = HfCheckpoint.hasWeights(teacher) ? DecoderModel.load(b, teacher, tdt) : open(b, teacher, seed + 1);
             DecoderModel s = open(b, student, seed);
             LmTrainer trainer = LmTrainer.distillation(s, t, kd, cfg, shared).lossChunk(lossChunk)) {
            // B windows of T + 1 random ids: inputs the first T, targets the last T (as TokenWindows cuts them).
            Random rnd = new Random(seed);
            long[] inputs = new long[batch * seqLen], targets = new long[batch * seqLen];
            for (int r = 0; r < batch; r++) {
                long[] w = new long[seqLen + 1];
                for (int i = 0; i <= seqLen; i++) w[i] = rnd.nextLong(shared);
                System.arraycopy(w, 0, inputs, r * seqLen, seqLen);
                System.arraycopy(w, 1, targets, r * seqLen, seqLen);
            }
            List<LmTrainer.MicroBatch> micro = List.of(new LmTrainer.MicroBatch(inputs, targets, batch, seqLen));
            long step = 0;
            LmTrainer.StepTerms last = null;
            for (int w = 0; w < warmup; w++) last = trainer.step(micro, ++step, lr, step);
            if (profile) DecoderProfile.reset(true);
            double[] rates = new double[repeats];
            long timed = 0;
            for (int r = 0; r < repeats; r++) {
                long t0 = System.nanoTime();
                for (int k = 0; k < steps; k++) last = trainer.step(micro, ++step, lr, step);
                long dt = System.nanoTime() - t0;
                timed += dt;
                rates[r] = (double) steps * batch * seqLen / (dt / 1e9);
            }
            double[] sorted = rates.clone();
            Arrays.sort(sorted);
            double median = repeats % 2 == 1 ? sorted[repeats / 2] : (sorted[repeats / 2 - 1] + sorted[repeats / 2]) / 2;
            int chunkRows = ChunkedLmLoss.chunkRows(lossChunk, (long) batch * seqLen, shared);
            out.printf(Locale.ROOT, "teacher %s: %s, %d layers, hidden %d, %,d parameters (%s, run in %s); student %s: %d layers, hidden %d, %,d parameters (%s)%n", teacher,
                tc.family().modelType(), tc.layers(), tc.hidden(), t.parameterCount(), t.diskDtype(), t.weightDtype(), student, sc.layers(), sc.hidden(), s.parameterCount(), s.diskDtype());
            out.printf(Locale.ROOT, "B %d, T %d, vocabulary %d; %s T %s alpha %s; %s lr %s weight decay %s; loss chunk %d rows (%s); loss %.6f (soft %.6f, hard %.6f)%n",
                batch, seqLen, shared, kd.divergence().cliName(), temperature, alpha, opt.name().toLowerCase(Locale.ROOT), lr, weightDecay, chunkRows,
                lossChunk == 0 ? "no chunking" : lossChunk < 0 ? "automatic" : "--loss-chunk", last == null ? Double.NaN : last.loss(),
                last == null ? Double.NaN : last.terms().soft(), last == null ? Double.NaN : last.terms().hard());
            out.printf(Locale.ROOT, "threads: %d fork-join (common pool parallelism %d + caller); gemm: %s%n",
                java.util.concurrent.ForkJoinPool.getCommonPoolParallelism() + 1, java.util.concurrent.ForkJoinPool.getCommonPoolParallelism(), CpuBlas.provider());
            if (profile) {
                DecoderProfile.printPhases(out, timed);
                DecoderProfile.print(out);
                DecoderProfile.reset(false); // process-wide: later work in this JVM is not timed
            }
            out.printf(Locale.ROOT, "%d warm-up steps, %d repeats x %d steps: %s tokens/s; spread %.1f-%.1f (%.1f%%)%n", warmup, repeats, steps,
                Arrays.toString(Arrays.stream(rates).map(v -> Math.round(v * 10) / 10.0).toArray()), sorted[0], sorted[repeats - 1],
                100 * (sorted[repeats - 1] - sorted[0]) / median);
            out.printf(Locale.ROOT, "median step %.1f ms; peak RSS %s%n", (double) batch * seqLen / median * 1e3, LmStepBench.peakRss());
            out.printf(Locale.ROOT, "lm-kd-step: %.1f tokens/s%n", median);
        }
        return 0;
    }

    /** The folder's weights, or a fresh initialisation from its config.json when it has none. */
    private static DecoderModel open(Backend b, Path dir, long seed) throws java.io.IOException {
        return HfCheckpoint.hasWeights(dir) ? DecoderModel.load(b, dir) : DecoderModel.fromConfig(b, dir, seed);
    }
}
