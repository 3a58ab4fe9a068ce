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
import org.distill4j.core.cpu.CpuMemory;
import org.distill4j.core.infer.Predictor;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

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

    /**
     * Linear layers wide enough to run on oneDNN's packed weights at 8 rows (300 x 600 x 8 is over
     * 2^20 multiply-adds; single rows take the plain gemv), when oneDNN is the engine.
     */
    private static final String PACKED_MLP = "{\"input\": [300], \"layers\": [{\"type\": \"linear\", \"in\": 300, \"out\": 600}, {\"type\": \"relu\"},"
        + "{\"type\": \"linear\", \"in\": 600, \"out\": 400}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 400, \"out\": 10}]}";

    /** Conv (im2col + gemm), batch norm, residual, max and average pooling, global pooling, flatten, linear. */
    private static final String CNN = "{\"input\": [3, 12, 12], \"layers\": [{\"type\": \"conv2d\", \"in\": 3, \"out\": 8, \"kernel\": 3, \"padding\": 1},"
        + "{\"type\": \"batchnorm2d\", \"features\": 8}, {\"type\": \"relu\"},"
        + "{\"type\": \"residual\", \"body\": [{\"type\": \"conv2d\", \"in\": 8, \"out\": 8, \"kernel\": 3, \"padding\": 1}, {\"type\": \"gelu\"}]},"
        + "{\"type\": \"maxpool2d\", \"kernel\": 2}, {\"type\": \"avgpool2d\", \"kernel\": 3, \"stride\": 1, \"padding\": 1},"
        + "{\"type\": \"adaptiveavgpool2d\", \"output\": 1}, {\"type\": \"flatten\"}, {\"type\": \"linear\", \"in\": 8, \"out\": 10}]}";

    /**
     * Warm calls, single rows and batches of 8 in turn (MLP: 20,000; CNN: 4,000, each about as long
     * as 20 MLP calls; the MLP on packed oneDNN weights: 6,000): under 1 KiB on the calling thread's allocated-bytes counter (the Java heap),
     * no native allocation through CpuMemory (workspaces, backend tensors, scratch), no new workspace. The -bf16 kinds: the same
     * models in a bf16 Predictor (bf16 packed matmuls and convolutions), on the oneDNN engine only (elsewhere bf16 runs a Java
     * loop that allocates).
     */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"mlp", "cnn", "packed-mlp", "mlp-bf16", "cnn-bf16"})
    void steadyStateAllocatesNothing(String kind) {
        var threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        boolean bf16 = kind.endsWith("-bf16");
        if (bf16) {
            org.junit.jupiter.api.Assumptions.assumeTrue(org.distill4j.core.cpu.CpuBlas.engine() == org.distill4j.core.cpu.CpuEngine.ONEDNN,
                "bf16 off the oneDNN engine is a Java loop that allocates");
        }
        String base = kind.replace("-bf16", "");
        String spec = switch (base) { case "mlp" -> MLP; case "cnn" -> CNN; default -> PACKED_MLP; };
        int pairs = switch (base) { case "mlp" -> bf16 ? 3_000 : 10_000; case "cnn" -> bf16 ? 1_000 : 2_000; default -> 3_000; }; // pairs of calls measured, after twice as many to warm up
        Predictor.Options options = bf16 ? Predictor.Options.defaults().withComputeDtype(org.distill4j.core.DType.BF16) : Predictor.Options.defaults();
        try (Model m = ModelSpec.parse(kind, spec).build(CpuBackend.get(), 4); Predictor p = Predictor.of(m, options)) {
            int in = (int) p.inputSize(), classes = (int) p.outputSize();
            Random r = new Random(1);
            float[] row = random(r, in), out = new float[classes], batch = random(r, 8 * in), batchOut = new float[8 * classes];
            for (int i = 0; i < 2 * pairs; i++) {
                p.predict(row, out);
                p.predict(batch, batchOut);
            }
            long id = Thread.currentThread().threadId();
            int workspaces = p.cpuWorkspacesCreated();
            long nativeBefore = CpuMemory.allocations(), nativeBytesBefore = CpuMemory.allocatedBytes();
            long before = threads.getThreadAllocatedBytes(id);
            for (int i = 0; i < pairs; i++) {
                p.predict(row, out);
                p.predict(batch, batchOut);
            }
            long allocated = threads.getThreadAllocatedBytes(id) - before;
            long nativeAllocations = CpuMemory.allocations() - nativeBefore, nativeBytes = CpuMemory.allocatedBytes() - nativeBytesBefore;
            System.out.printf("PredictorServiceTest %s: over %,d warm calls %d heap bytes, %d native allocations (%d bytes), workspaces %d -> %d%n",
                kind, 2 * pairs, allocated, nativeAllocations, nativeBytes, workspaces, p.cpuWorkspacesCreated());
            assertTrue(allocated < 1024, kind + ": " + allocated + " heap bytes allocated over " + 2 * pairs + " warm calls");
            assertEquals(0, nativeAllocations, kind + ": native allocations (CpuMemory) over " + 2 * pairs + " warm calls");
            assertEquals(workspaces, p.cpuWorkspacesCreated(), kind + ": workspaces made during the warm calls");
            assertEquals(1, workspaces, kind + ": workspaces made by one calling thread");
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
