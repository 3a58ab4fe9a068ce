package org.distill4j.bench.ort;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.FloatBuffer;
import java.util.Arrays;
import java.util.Locale;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CountDownLatch;

/**
 * The ONNX Runtime side of `distill bench predict`: the same student exported to ONNX
 * (bench/pytorch/export_onnx.py), called the way a Java service calls ORT (a shared OrtSession, an
 * OnnxTensor per call, session.run), N threads x batch B for the given time; p50/p99 over every
 * call after the warm-up. Prints "ort: p50 <us> us, p99 <us> us, <n> req/s" last.
 *
 *   OrtPredictBench MODEL.onnx THREADS BATCH [SECONDS] [WARMUP_SECONDS] [INTRA_OP_THREADS (0: ORT's default)]
 */
public final class OrtPredictBench {
    private OrtPredictBench() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: OrtPredictBench MODEL.onnx THREADS BATCH [SECONDS] [WARMUP_SECONDS] [INTRA_OP_THREADS]");
            System.exit(2);
        }
        String model = args[0];
        int threads = Integer.parseInt(args[1]), batch = Integer.parseInt(args[2]);
        double seconds = args.length > 3 ? Double.parseDouble(args[3]) : 10, warmup = args.length > 4 ? Double.parseDouble(args[4]) : 3;
        int intra = args.length > 5 ? Integer.parseInt(args[5]) : 0;
        OrtEnvironment env = OrtEnvironment.getEnvironment();
        try (OrtSession.SessionOptions so = new OrtSession.SessionOptions()) {
            so.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
            if (intra > 0) so.setIntraOpNumThreads(intra);
            try (OrtSession session = env.createSession(model, so)) {
                String input = session.getInputNames().iterator().next();
                long[] shape = ((ai.onnxruntime.TensorInfo) session.getInputInfo().get(input).getInfo()).getShape();
                int in = 1;
                for (int i = 1; i < shape.length; i++) in *= (int) shape[i];
                long[] callShape = shape.clone();
                callShape[0] = batch;
                int inSize = in;
                long warmEnd = System.nanoTime() + (long) (warmup * 1e9), end = warmEnd + (long) (seconds * 1e9);
                long[][] lat = new long[threads][1 << 20];
                int[] counts = new int[threads];
                CountDownLatch done = new CountDownLatch(threads);
                Exception[] failure = new Exception[1];
                for (int t = 0; t < threads; t++) {
                    int id = t;
                    Thread.ofPlatform().start(() -> {
                        Random rnd = new Random(id);
                        float[] x = new float[batch * inSize];
                        for (int i = 0; i < x.length; i++) x[i] = rnd.nextFloat();
                        try {
                            long now;
                            while ((now = System.nanoTime()) < end) {
                                try (OnnxTensor tx = OnnxTensor.createTensor(env, FloatBuffer.wrap(x), callShape);
                                     OrtSession.Result r = session.run(Map.of(input, tx))) {
                                    float[][] y = (float[][]) r.get(0).getValue();
                                    if (y.length != batch) throw new IllegalStateException("ORT returned " + y.length + " rows");
                                }
                                long after = System.nanoTime();
                                if (now >= warmEnd && counts[id] < lat[id].length) lat[id][counts[id]++] = after - now;
                            }
                        } catch (OrtException | RuntimeException e) {
                            failure[0] = e;
                        } finally {
                            done.countDown();
                        }
                    });
                }
                done.await();
                if (failure[0] != null) throw failure[0];
                int total = Arrays.stream(counts).sum();
                long[] all = new long[total];
                int at = 0;
                for (int t = 0; t < threads; t++) {
                    System.arraycopy(lat[t], 0, all, at, counts[t]);
                    at += counts[t];
                }
                Arrays.sort(all);
                double rate = total / seconds;
                System.out.printf(Locale.ROOT, "%s on ONNX Runtime %s (CPU, intra-op threads %s): %d threads x batch %d, %,d calls, %,.0f samples/s%n", model,
                    env.getVersion(), intra == 0 ? "default" : intra, threads, batch, total, rate * batch);
                System.out.printf(Locale.ROOT, "ort: p50 %.1f us, p99 %.1f us, %.0f req/s%n", all[(int) (0.5 * (total - 1))] / 1e3,
                    all[(int) (0.99 * (total - 1))] / 1e3, rate);
            }
        }
        System.exit(0); // ORT's native threads are not daemons
    }
}
