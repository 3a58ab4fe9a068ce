package org.distill4j.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import org.distill4j.core.Backend;
import org.distill4j.core.data.DataSpec;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.nn.Model;
import org.distill4j.core.train.Checkpoints;
import org.distill4j.core.train.Trainer;
import org.distill4j.core.train.TrainingConfig;
import picocli.CommandLine.Option;

/** The options {@code distill train} and {@code distill distill} share, in one style. */
final class TrainingOptions {
    @Option(names = "--data", required = true, paramLabel = "KIND:FILES",
        description = "training data: idx:IMAGES,LABELS | cifar10:FILES | npy:X,Y; decoders: tokens:FILE (.bin or 1-D .npy) | text:FILES (with --tokenizer)")
    String data;

    @Option(names = "--test-data", paramLabel = "KIND:FILES",
        description = "test data, same syntax (required for a model spec; a decoder's validation tokens, optional)")
    String testData;

    @Option(names = "--epochs", description = "default: 10 (a decoder: 1)") Integer epochsOption;
    @Option(names = "--batch", description = "micro-batch size: samples, or a decoder's windows of --seq-len tokens (default: 128; a decoder: 8)")
    Integer batchOption;
    @Option(names = "--seq-len", paramLabel = "T", description = "decoders: tokens per training window (windows of T + 1 start every T tokens)") Integer seqLen;
    @Option(names = "--tokenizer", paramLabel = "DIR|tokenizer.json",
        description = "decoders: tokenises text: data (cached beside the text) and is copied into --out with the model") java.nio.file.Path tokenizer;
    @Option(names = "--loss-chunk", defaultValue = "-1", paramLabel = "ROWS",
        description = "decoders: token rows per chunk of the lm_head + loss (never the whole [B*T, V] logits); 0: no chunking; default: automatic, "
            + "about 32 MiB of logits a chunk") int lossChunk;
    int epochs, batch;
    @Option(names = "--accumulation", defaultValue = "1", description = "micro-batches per optimizer step (default: ${DEFAULT-VALUE})") int accumulation;
    @Option(names = "--optimizer", defaultValue = "adamw", paramLabel = "sgd|adamw", description = "default: ${DEFAULT-VALUE}") String optimizer;
    @Option(names = "--lr", defaultValue = "1e-3", description = "learning rate (default: ${DEFAULT-VALUE})") float lr;
    @Option(names = "--momentum", defaultValue = "0.9", description = "SGD momentum (default: ${DEFAULT-VALUE})") float momentum;
    @Option(names = "--nesterov", description = "Nesterov momentum (SGD)") boolean nesterov;
    @Option(names = "--weight-decay", defaultValue = "1e-4", description = "default: ${DEFAULT-VALUE}") float weightDecay;
    @Option(names = "--schedule", defaultValue = "cosine", paramLabel = "constant|cosine|step", description = "default: ${DEFAULT-VALUE}") String schedule;
    @Option(names = "--warmup", defaultValue = "0", description = "linear warm-up steps (default: ${DEFAULT-VALUE})") int warmup;
    @Option(names = "--clip-norm", defaultValue = "0", description = "clip the global gradient norm (0: off)") float clipNorm;
    @Option(names = "--seed", defaultValue = "1", description = "initialisation, dropout and shuffling seed (default: ${DEFAULT-VALUE})") long seed;
    @Option(names = "--out", required = true, paramLabel = "DIR", description = "model.safetensors, metrics.jsonl and checkpoints/ go here") Path out;
    @Option(names = "--checkpoint-every", defaultValue = "500", description = "steps between checkpoints (default: ${DEFAULT-VALUE})") int checkpointEvery;
    @Option(names = "--keep", defaultValue = "3", description = "checkpoints kept (default: ${DEFAULT-VALUE})") int keep;
    @Option(names = "--resume", description = "continue from the newest checkpoint in DIR/checkpoints") boolean resume;
    @Option(names = "--max-steps", description = "stop after this many optimizer steps") Long maxSteps;
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda", description = "default: ${DEFAULT-VALUE}") String device;
    @Option(names = "--graph", defaultValue = "auto", paramLabel = "auto|on|off",
        description = "capture the training step as a CUDA graph and replay it (auto: on a GPU when the step allows it; default: ${DEFAULT-VALUE})") String graph;
    @Option(names = "--skip-non-finite", description = "skip an optimizer step whose loss or gradient is NaN/Inf instead of stopping (one host sync per step)")
    boolean skipNonFinite;

    Trainer.GraphMode graphMode() {
        return Trainer.GraphMode.parse(graph);
    }

    /** The settings for a model spec (MLP/CNN): the decoder-only options are refused, --test-data is required. */
    TrainingConfig config() {
        if (seqLen != null || tokenizer != null || lossChunk != -1) {
            throw new IllegalArgumentException("--seq-len, --tokenizer and --loss-chunk are for decoders (a Hugging Face model folder), not a model spec");
        }
        if (testData == null) throw new IllegalArgumentException("--test-data is required with a model spec");
        return config(10, 128);
    }

    /** The settings for a decoder. */
    TrainingConfig decoderConfig() {
        if (seqLen == null) throw new IllegalArgumentException("--seq-len T is required with a decoder (tokens per training window)");
        if (seqLen < 1) throw new IllegalArgumentException("--seq-len must be >= 1, got " + seqLen);
        if (lossChunk < -1) throw new IllegalArgumentException("--loss-chunk must be >= 0 rows (0: no chunking), got " + lossChunk);
        return config(1, 8);
    }

    private TrainingConfig config(int defaultEpochs, int defaultBatch) {
        epochs = epochsOption == null ? defaultEpochs : epochsOption;
        batch = batchOption == null ? defaultBatch : batchOption;
        TrainingConfig.Optimizer opt = switch (optimizer.toLowerCase(Locale.ROOT)) {
            case "sgd" -> TrainingConfig.Optimizer.SGD;
            case "adamw" -> TrainingConfig.Optimizer.ADAMW;
            default -> throw new IllegalArgumentException("--optimizer must be sgd or adamw, got '" + optimizer + "'");
        };
        TrainingConfig.Schedule sched = switch (schedule.toLowerCase(Locale.ROOT)) {
            case "constant" -> TrainingConfig.Schedule.CONSTANT;
            case "cosine" -> TrainingConfig.Schedule.COSINE;
            case "step" -> TrainingConfig.Schedule.STEP;
            default -> throw new IllegalArgumentException("--schedule must be constant, cosine or step, got '" + schedule + "'");
        };
        Devices.check(device);
        graphMode();
        if (maxSteps != null && maxSteps < 1) throw new IllegalArgumentException("--max-steps must be >= 1, got " + maxSteps);
        return new TrainingConfig(opt, lr, opt == TrainingConfig.Optimizer.SGD ? momentum : 0f, nesterov, weightDecay, sched, warmup, epochs, batch, seed,
            1, 10, accumulation, clipNorm);
    }

    Backend backend() {
        return Devices.open(device);
    }

    Dataset train() throws IOException {
        return DataSpec.open(data);
    }

    Dataset test() throws IOException {
        return DataSpec.open(testData);
    }

    Checkpoints checkpoints() {
        return new Checkpoints(out.resolve("checkpoints"), checkpointEvery, keep, resume);
    }

    /** The first fields of a metrics.jsonl row: epoch, step, train loss, and the soft/hard/hint terms where they exist (not NaN). */
    static Map<String, Object> metricsRow(int epoch, long step, double trainLoss, double soft, double hard, double hint) {
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("epoch", epoch);
        row.put("step", step);
        row.put("train_loss", trainLoss);
        if (!Double.isNaN(soft)) {
            row.put("soft_loss", soft);
            row.put("hard_loss", hard);
        }
        if (!Double.isNaN(hint)) row.put("hint_loss", hint);
        return row;
    }

    /** Appends a row to metrics.jsonl and flushes it (a killed run keeps every finished evaluation). */
    static void appendRow(BufferedWriter w, ObjectMapper json, Map<String, Object> row) {
        try {
            w.write(json.writeValueAsString(row));
            w.newLine();
            w.flush();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Runs the trainer, printing one line per epoch and appending each evaluation to metrics.jsonl; saves the model. */
    Trainer.Result run(Trainer trainer, Model model, Dataset train, Dataset test, PrintWriter console) throws IOException {
        Files.createDirectories(out);
        ObjectMapper json = new ObjectMapper();
        Path metrics = out.resolve("metrics.jsonl");
        if (maxSteps != null) trainer.stopAfter(maxSteps);
        ProgressLine bar = ProgressLine.forTerminal(console);
        trainer.onStep(bar::update).graph(graphMode()).skipNonFinite(skipNonFinite).onNote(note -> {
            console.println(note);
            console.flush();
        });
        Trainer.Result r;
        try (BufferedWriter w = Files.newBufferedWriter(metrics, java.nio.file.StandardOpenOption.CREATE, resume
            ? java.nio.file.StandardOpenOption.APPEND : java.nio.file.StandardOpenOption.TRUNCATE_EXISTING)) {
            r = trainer.fit(train, test, m -> {
                bar.clear();
                String terms = (Double.isNaN(m.softLoss()) ? "" : String.format(Locale.ROOT, "soft %.4f, hard %.4f", m.softLoss(), m.hardLoss()))
                    + (Double.isNaN(m.hintLoss()) ? "" : String.format(Locale.ROOT, "%shint %.4f", Double.isNaN(m.softLoss()) ? "" : ", ", m.hintLoss()));
                console.printf("epoch %d/%d  step %d  train loss %.4f%s  test loss %.4f  test accuracy %.2f%%  lr %.2e  %.0f samples/s  %.1f s%s%n", m.epoch(),
                    epochs, m.step(), m.trainLoss(), terms.isEmpty() ? "" : " (" + terms + ")", m.testLoss(),
                    100 * m.testAccuracy(), m.lr(), m.samplesPerSecond(), m.seconds(), m.skippedSteps() > 0 ? "  skipped " + m.skippedSteps() : "");
                console.flush();
                Map<String, Object> row = metricsRow(m.epoch(), m.step(), m.trainLoss(), m.softLoss(), m.hardLoss(), m.hintLoss());
                row.put("test_loss", m.testLoss());
                row.put("test_accuracy", m.testAccuracy());
                row.put("lr", m.lr());
                row.put("samples_per_s", m.samplesPerSecond());
                row.put("seconds", m.seconds());
                row.put("skipped_steps", m.skippedSteps());
                appendRow(w, json, row);
            }, checkpoints());
        }
        model.save(out.resolve("model.safetensors"));
        boolean curves = Curves.write(out.resolve("curves.png"), out.getFileName().toString(), r.history());
        console.println();
        console.printf("%-6s %8s %12s %12s %14s%n", "epoch", "step", "train loss", "test loss", "test accuracy");
        for (Trainer.Metrics m : r.history()) {
            console.printf("%-6d %8d %12.4f %12.4f %13.2f%%%n", m.epoch(), m.step(), m.trainLoss(), m.testLoss(), 100 * m.testAccuracy());
        }
        console.printf("done: %d steps%s, test accuracy %.2f%%, %.1f s, %.0f samples/s; model in %s, metrics in %s, curves in %s%n", r.steps(),
            r.skippedSteps() > 0 ? " (" + r.skippedSteps() + " skipped: non-finite)" : "", 100 * r.testAccuracy(), r.seconds(), r.samplesPerSecond(),
            out.resolve("model.safetensors"), metrics,
            curves ? out.resolve("curves.png") : "(none: this Java runtime has no java.desktop)");
        return r;
    }
}
