package org.distill4j.cli;

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Locale;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import org.distill4j.core.Backend;
import org.distill4j.core.infer.Predictor;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill bench predict}: latency and throughput of the embedded {@link Predictor}, as a
 * service would call it: N threads, each calling {@code predict} with B rows of random input in a
 * loop for the given time; every call's latency is recorded (preallocated, so the harness itself
 * does not allocate); p50/p99 over all calls after the warm-up, and calls per second.
 * bench/ort/OrtPredictBench does the same with ONNX Runtime's Java API.
 */
@Command(name = "predict", mixinStandardHelpOptions = true,
    description = "Latency/throughput of the Predictor; last line: predict: p50 <us> us, p99 <us> us, <n> req/s.",
    footer = {"", "Example:", "  distill bench predict --model examples/mnist/student.json --weights runs/mnist/student-kd/model.safetensors --threads 8 --batch 1"})
final class PredictBench implements Callable<Integer> {
    @Option(names = "--model", required = true, paramLabel = "SPEC.json") Path model;
    @Option(names = "--weights", required = true, paramLabel = "W.safetensors") Path weights;
    @Option(names = "--threads", defaultValue = "1", description = "calling threads (default: ${DEFAULT-VALUE})") int threads;
    @Option(names = "--batch", defaultValue = "1", description = "rows per call (default: ${DEFAULT-VALUE})") int batch;
    @Option(names = "--seconds", defaultValue = "10", description = "measured time (default: ${DEFAULT-VALUE})") double seconds;
    @Option(names = "--warmup-seconds", defaultValue = "3", description = "default: ${DEFAULT-VALUE}") double warmup;
    @Option(names = "--dynamic-batching", description = "gather concurrent single-row calls into batches") boolean dynamic;
    @Option(names = "--max-batch", defaultValue = "64", description = "rows run at once / dynamic batch size (default: ${DEFAULT-VALUE})") int maxBatch;
    @Option(names = "--max-wait-us", defaultValue = "200", description = "dynamic batching: longest wait for more rows (default: ${DEFAULT-VALUE})") long maxWait;
    @Option(names = "--intra-op-threads", defaultValue = "1", paramLabel = "1|0",
        description = "CPU: 1 runs each call on its caller's thread (default); 0 lets a call use more cores (the oneDNN engine: split between the caller and IntraOpPool's helpers; OpenBLAS: its own pool)") int intraOp;
    @Option(names = "--gpu-workers", defaultValue = "2", description = "CUDA: workers, each with its own stream (default: ${DEFAULT-VALUE})") int gpuWorkers;
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda", description = "default: ${DEFAULT-VALUE}") String device;
    @Option(names = "--dtype", defaultValue = "f32", paramLabel = "f32|bf16",
        description = "CPU: float32, or bf16 matrix products and convolutions (bf16 weights and inputs, float32 sums) (default: ${DEFAULT-VALUE})") String dtype;
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (threads < 1 || batch < 1 || !(seconds > 0) || warmup < 0) {
            throw new IllegalArgumentException("--threads and --batch must be >= 1, --seconds > 0, --warmup-seconds >= 0");
        }
        if (dynamic && batch != 1) throw new IllegalArgumentException("--dynamic-batching gathers single-row calls: use --batch 1");
        Devices.check(device);
        org.distill4j.core.DType computeDtype = switch (dtype) {
            case "f32" -> org.distill4j.core.DType.F32;
            case "bf16" -> org.distill4j.core.DType.BF16;
            default -> throw new IllegalArgumentException("--dtype must be f32 or bf16, got '" + dtype + "'");
        };
        PrintWriter out = spec.commandLine().getOut();
        Predictor.Options options = new Predictor.Options(Math.max(maxBatch, batch), dynamic, maxWait, intraOp, gpuWorkers).withComputeDtype(computeDtype);
        try (Backend b = Devices.open(device); Predictor p = Predictor.load(b, model, weights, options)) {
            int in = (int) p.inputSize(), outSize = (int) p.outputSize();
            long warmEnd = System.nanoTime() + (long) (warmup * 1e9), end = warmEnd + (long) (seconds * 1e9);
            long[][] latencies = new long[threads][];
            int[] counts = new int[threads];
            CountDownLatch done = new CountDownLatch(threads);
            Thread[] workers = new Thread[threads];
            RuntimeException[] failure = new RuntimeException[1];
            for (int t = 0; t < threads; t++) {
                int id = t;
                latencies[t] = new long[1 << 20]; // 8 MiB a thread: over a million calls
                workers[t] = Thread.ofPlatform().name("bench-" + t).start(() -> {
                    Random rnd = new Random(id);
                    float[] x = new float[batch * in], y = new float[batch * outSize];
                    for (int i = 0; i < x.length; i++) x[i] = rnd.nextFloat();
                    try {
                        long now;
                        while ((now = System.nanoTime()) < end) {
                            p.predict(x, y);
                            long after = System.nanoTime();
                            if (now >= warmEnd && counts[id] < latencies[id].length) latencies[id][counts[id]++] = after - now;
                        }
                    } catch (RuntimeException e) {
                        failure[0] = e;
                    } finally {
                        done.countDown();
                    }
                });
            }
            done.await();
            if (failure[0] != null) throw failure[0];
            int total = 0;
            for (int c : counts) total += c;
            long[] all = new long[total];
            int at = 0;
            for (int t = 0; t < threads; t++) {
                System.arraycopy(latencies[t], 0, all, at, counts[t]);
                at += counts[t];
            }
            Arrays.sort(all);
            double p50 = all[(int) (0.50 * (total - 1))] / 1e3, p99 = all[(int) (0.99 * (total - 1))] / 1e3, rate = total / seconds;
            out.printf(Locale.ROOT, "%s on %s (%s, intra-op threads %d): %d threads x batch %d%s, %.1f s measured after %.1f s warm-up: %,d calls, %,.0f samples/s%n",
                model, b.name(), dtype, intraOp, threads, batch, dynamic ? " (dynamic batching up to " + maxBatch + " rows, " + maxWait + " us)" : "", seconds, warmup, total, rate * batch);
            out.printf(Locale.ROOT, "predict: p50 %.1f us, p99 %.1f us, %.0f req/s%n", p50, p99, rate);
        }
        return 0;
    }
}
