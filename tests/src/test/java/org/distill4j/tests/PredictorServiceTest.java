package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicLong;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.infer.Predictor;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The Predictor as a service uses it: no allocation per warm call (the thread's allocated-bytes
 * counter), and 32 threads of random inputs checked against single-threaded answers, with flat
 * memory (heap after GC and the process's resident set): for 8 s in the default run, and for
 * 60 s (-Dpredictor.stress.seconds) in the long suite (tag "long": {@code ./distill test-long}),
 * which a 2-core machine should not spend on every run.
 */
class PredictorServiceTest {
    private static final String MLP = "{\"input\": [64], \"layers\": [{\"type\": \"linear\", \"in\": 64, \"out\": 128}, {\"type\": \"relu\"},"
        + "{\"type\": \"linear\", \"in\": 128, \"out\": 64}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 64, \"out\": 10}]}";

    private static float[] random(Random r, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) r.nextGaussian();
        return v;
    }

    @Test
    void steadyStateAllocatesNothing() {
        var threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), 4); Predictor p = Predictor.of(m, Predictor.Options.defaults())) {
            Random r = new Random(1);
            float[] in = random(r, 64), out = new float[10], batch = random(r, 8 * 64), batchOut = new float[8 * 10];
            for (int i = 0; i < 20_000; i++) {
                p.predict(in, out);
                p.predict(batch, batchOut);
            }
            long id = Thread.currentThread().threadId();
            long before = threads.getThreadAllocatedBytes(id);
            for (int i = 0; i < 10_000; i++) {
                p.predict(in, out);
                p.predict(batch, batchOut);
            }
            long allocated = threads.getThreadAllocatedBytes(id) - before;
            System.out.println("PredictorServiceTest: " + allocated + " bytes allocated over 20,000 warm calls");
            assertTrue(allocated < 1024, allocated + " bytes allocated over 20,000 warm calls");
        }
    }

    private static long residentBytes() throws Exception {
        String[] statm = Files.readString(Path.of("/proc/self/statm")).trim().split("\\s+");
        return Long.parseLong(statm[1]) * 4096;
    }

    private static long heapAfterGc() {
        System.gc();
        Runtime rt = Runtime.getRuntime();
        return rt.totalMemory() - rt.freeMemory();
    }

    @Test
    void thirtyTwoThreadsBriefly() throws Exception {
        thirtyTwoThreads(8);
    }

    @Test
    @Tag("long")
    void thirtyTwoThreadsForAMinute() throws Exception {
        thirtyTwoThreads(Long.getLong("predictor.stress.seconds", 60));
    }

    private static void thirtyTwoThreads(long seconds) throws Exception {
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), 4); Predictor p = Predictor.of(m, Predictor.Options.defaults())) {
            int rows = 256;
            Random r = new Random(2);
            float[] x = random(r, rows * 64);
            float[][] want = new float[rows][];
            for (int i = 0; i < rows; i++) want[i] = p.predict(java.util.Arrays.copyOfRange(x, i * 64, i * 64 + 64));
            ExecutorService pool = Executors.newFixedThreadPool(32);
            AtomicLong calls = new AtomicLong(), wrong = new AtomicLong();
            long[] rss = new long[2], heap = new long[2];
            long end = System.nanoTime() + seconds * 1_000_000_000L, warm = System.nanoTime() + Math.min(5_000L, seconds * 250) * 1_000_000L;
            List<Future<?>> fs = new ArrayList<>();
            for (int t = 0; t < 32; t++) {
                int seed = t;
                fs.add(pool.submit(() -> {
                    Random rnd = new Random(seed);
                    float[] in = new float[64], out = new float[10];
                    while (System.nanoTime() < end) {
                        int i = rnd.nextInt(rows);
                        System.arraycopy(x, i * 64, in, 0, 64);
                        p.predict(in, out);
                        if (!java.util.Arrays.equals(out, want[i])) wrong.incrementAndGet();
                        calls.incrementAndGet();
                    }
                }));
            }
            while (System.nanoTime() < warm) Thread.sleep(50);
            rss[0] = residentBytes();
            heap[0] = heapAfterGc();
            for (Future<?> f : fs) f.get();
            pool.shutdown();
            rss[1] = residentBytes();
            heap[1] = heapAfterGc();
            System.out.printf("PredictorServiceTest: 32 threads x %d s: %,d calls, %,d wrong; resident %,d -> %,d bytes, heap after GC %,d -> %,d bytes%n",
                seconds, calls.get(), wrong.get(), rss[0], rss[1], heap[0], heap[1]);
            assertEquals(0, wrong.get(), "answers that differ from the single-threaded ones");
            assertTrue(calls.get() > 32, "calls made: " + calls.get());
            assertTrue(rss[1] - rss[0] < 64L << 20, "resident memory grew by " + (rss[1] - rss[0]) + " bytes");
            assertTrue(heap[1] - heap[0] < 16L << 20, "heap after GC grew by " + (heap[1] - heap[0]) + " bytes");
        }
    }
}
