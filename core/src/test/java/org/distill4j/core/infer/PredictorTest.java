package org.distill4j.core.infer;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.FloatBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import org.distill4j.core.Tensor;
import org.distill4j.core.TestFiles;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.junit.jupiter.api.Test;

/** The Predictor on the CPU: the same numbers as Model.forward, thread safety, allocation-free calls, close, bad input. */
class PredictorTest {
    private static final Path FIXTURE = TestFiles.resource("/fixtures/model");
    private static final String MLP = "{\"input\": [20], \"layers\": [{\"type\": \"linear\", \"in\": 20, \"out\": 64}, {\"type\": \"batchnorm1d\", \"features\": 64},"
        + "{\"type\": \"gelu\"}, {\"type\": \"dropout\", \"p\": 0.3}, {\"type\": \"linear\", \"in\": 64, \"out\": 32}, {\"type\": \"relu\"},"
        + "{\"type\": \"linear\", \"in\": 32, \"out\": 5}]}";

    private static float[] random(int n, long seed) {
        Random r = new Random(seed);
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) r.nextGaussian();
        return v;
    }

    private static float[] forward(Model m, float[] x, long... shape) {
        try (Arena a = Arena.ofShared(); Tensor t = CpuBackend.get().fromArray(x, shape)) {
            return m.forward(new Layer.Pass(CpuBackend.get(), a, false, 0, 0), t).toFloatArray();
        }
    }

    /**
     * Every layer type (the PyTorch interop CNN): a batch through the Predictor equals Model.forward
     * of the same batch, bit for bit; on the oneDNN engine, whose plan fuses convolutions with the
     * batch norm and ReLU after them (OnednnInferenceConv, folded weights), within float32 rounding.
     */
    @Test
    void sameNumbersAsModelForward() throws Exception {
        try (Model m = ModelSpec.read(FIXTURE.resolve("cnn.json")).build(CpuBackend.get(), 0)) {
            m.load(FIXTURE.resolve("cnn.safetensors"));
            long in = Tensor.numel(m.inputShape());
            for (int rows : new int[] {1, 3, 16}) {
                float[] x = random((int) (rows * in), rows);
                float[] expected = forward(m, x, rows, 3, 12, 12);
                try (Predictor p = Predictor.of(m, new Predictor.Options(16, false, 0))) {
                    assertSameOrFused(expected, p.predict(x), "rows " + rows);
                    float[] viaBuffer = new float[expected.length];
                    p.predict(FloatBuffer.wrap(x), FloatBuffer.wrap(viaBuffer));
                    assertSameOrFused(expected, viaBuffer, "FloatBuffer, rows " + rows);
                    try (Arena a = Arena.ofConfined()) {
                        MemorySegment si = a.allocateFrom(java.lang.foreign.ValueLayout.JAVA_FLOAT, x), so = a.allocate(expected.length * 4L);
                        p.predict(si, so);
                        assertSameOrFused(expected, so.toArray(java.lang.foreign.ValueLayout.JAVA_FLOAT), "MemorySegment, rows " + rows);
                    }
                }
            }
            // More rows than maxBatch are split; each chunk equals forward of that chunk.
            float[] x = random((int) (10 * in), 99);
            try (Predictor p = Predictor.of(m, new Predictor.Options(4, false, 0))) {
                float[] got = p.predict(x);
                for (int c = 0; c < 10; c += 4) {
                    int n = Math.min(4, 10 - c);
                    float[] chunk = java.util.Arrays.copyOfRange(x, (int) (c * in), (int) ((c + n) * in));
                    float[] want = forward(m, chunk, n, 3, 12, 12);
                    assertSameOrFused(want, java.util.Arrays.copyOfRange(got, c * 5, (c + n) * 5), "chunk at row " + c);
                }
            }
        }
    }

    /** Bit for bit, or within float32 rounding where the plan fuses convolutions (the oneDNN engine). */
    private static void assertSameOrFused(float[] want, float[] got, String where) {
        if (org.distill4j.core.cpu.OnednnInferenceConv.enabled()) assertClose(want, got, where + " (fused convolutions)");
        else assertArrayEquals(want, got, where);
    }

    /**
     * An MLP wide enough that its linear layers pack on the oneDNN engine (400 x 600 x 64 rows is
     * over 2^20 multiply-adds): the Predictor equals Model.forward (within float32 rounding: packed
     * and plain are the same kernel here, but only rounding is promised), and serves the weights it
     * was made with: writing the model's weights afterwards leaves its answers unchanged, and a new
     * Predictor serves the new weights (on the OpenBLAS and Java engines nothing is packed and the
     * plan reads the model in place).
     */
    @Test
    void packedWeightsAreASnapshotOfTheModel() throws Exception {
        String spec = "{\"input\": [300], \"layers\": [{\"type\": \"linear\", \"in\": 300, \"out\": 600}, {\"type\": \"relu\"},"
            + "{\"type\": \"linear\", \"in\": 600, \"out\": 400}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 400, \"out\": 10}]}";
        Path file = java.nio.file.Files.createTempFile("packed-mlp", ".json");
        try {
            java.nio.file.Files.writeString(file, spec);
            try (Model m = ModelSpec.read(file).build(CpuBackend.get(), 7)) {
                System.out.println("PredictorTest.packedWeightsAreASnapshotOfTheModel: gemm on " + org.distill4j.core.cpu.CpuBlas.provider());
                for (int rows : new int[] {1, 2, 17, 64}) {
                    float[] x = random(rows * 300, 1000 + rows);
                    float[] expected = forward(m, x, rows, 300);
                    float[] before;
                    try (Predictor p = Predictor.of(m, new Predictor.Options(64, false, 0))) {
                        before = p.predict(x);
                        assertClose(expected, before, "rows " + rows);
                        // Write every weight of the model (scale by 2): on the oneDNN engine the open Predictor keeps
                        // serving its snapshot; on the others its plan reads the model's tensors in place.
                        for (var param : m.parameters()) CpuBackend.get().scale(2f, param.value());
                        float[] scaled = forward(m, x, rows, 300);
                        if (org.distill4j.core.cpu.OnednnPackedMatmul.enabled()) {
                            assertArrayEquals(before, p.predict(x), "rows " + rows + ": the open Predictor saw a write to the model's weights");
                        } else {
                            assertArrayEquals(scaled, p.predict(x), "rows " + rows + ": the plan reads the model in place on this engine");
                        }
                    }
                    float[] scaled = forward(m, x, rows, 300);
                    try (Predictor p = Predictor.of(m, new Predictor.Options(64, false, 0))) {
                        assertClose(scaled, p.predict(x), "rows " + rows + ", a new Predictor after the write");
                    }
                    for (var param : m.parameters()) CpuBackend.get().scale(0.5f, param.value());
                }
            }
        } finally {
            java.nio.file.Files.deleteIfExists(file);
        }
    }

    private static void assertClose(float[] want, float[] got, String where) {
        assertEquals(want.length, got.length, where + ": length");
        for (int i = 0; i < want.length; i++) {
            assertTrue(Math.abs(want[i] - got[i]) <= 1e-5f * (1 + Math.abs(want[i])), where + ": element " + i + " " + want[i] + " vs " + got[i]);
        }
    }

    /** 8 threads of single-row calls give exactly the single-threaded answers. */
    @Test
    void threadsGiveTheSameAnswers() throws Exception {
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), 4); Predictor p = Predictor.of(m, Predictor.Options.defaults())) {
            int rows = 400;
            float[] x = random(rows * 20, 5);
            float[][] single = new float[rows][];
            for (int r = 0; r < rows; r++) single[r] = p.predict(java.util.Arrays.copyOfRange(x, r * 20, r * 20 + 20));
            ExecutorService pool = Executors.newFixedThreadPool(8);
            try {
                List<Future<?>> fs = new ArrayList<>();
                AtomicInteger mismatches = new AtomicInteger();
                for (int t = 0; t < 8; t++) {
                    int seed = t;
                    fs.add(pool.submit(() -> {
                        Random rnd = new Random(seed);
                        float[] out = new float[5], in = new float[20];
                        for (int i = 0; i < 2000; i++) {
                            int r = rnd.nextInt(rows);
                            System.arraycopy(x, r * 20, in, 0, 20);
                            p.predict(in, out);
                            if (!java.util.Arrays.equals(out, single[r])) mismatches.incrementAndGet();
                        }
                    }));
                }
                for (Future<?> f : fs) f.get();
                assertEquals(0, mismatches.get(), "answers that differ from the single-threaded ones");
            } finally {
                pool.shutdown();
            }
        }
    }

    /**
     * The workspace pool: one caller makes one workspace; 16 threads share at most cpuWorkspaces of
     * them and answer as one thread does; a pool of one serves single-row (dynamic batching) and
     * multi-row calls at once without deadlock.
     */
    @Test
    void workspacesAreABoundedPool() throws Exception {
        assertEquals(Runtime.getRuntime().availableProcessors(), Predictor.Options.defaults().cpuWorkspaces());
        var bad = assertThrows(IllegalArgumentException.class, () -> Predictor.Options.defaults().withCpuWorkspaces(0));
        assertEquals("cpuWorkspaces must be >= 1, got 0", bad.getMessage());
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), 4)) {
            float[] x = random(3 * 20, 11);
            try (Predictor p = Predictor.of(m, Predictor.Options.defaults().withCpuWorkspaces(3))) {
                float[] want = p.predict(x);
                for (int i = 0; i < 100; i++) p.predict(x);
                assertEquals(1, p.cpuWorkspacesCreated(), "workspaces made by one thread");
                ExecutorService pool = Executors.newFixedThreadPool(16);
                AtomicInteger wrong = new AtomicInteger();
                List<Future<?>> fs = new ArrayList<>();
                for (int t = 0; t < 16; t++) {
                    fs.add(pool.submit(() -> {
                        float[] out = new float[want.length];
                        for (int i = 0; i < 500; i++) {
                            p.predict(x, out);
                            if (!java.util.Arrays.equals(out, want)) wrong.incrementAndGet();
                        }
                    }));
                }
                for (Future<?> f : fs) f.get();
                pool.shutdown();
                assertEquals(0, wrong.get(), "answers that differ from the single-threaded ones");
                assertTrue(p.cpuWorkspacesCreated() >= 1 && p.cpuWorkspacesCreated() <= 3, p.cpuWorkspacesCreated() + " workspaces for a pool of 3");
            }
            try (Predictor one = Predictor.of(m, new Predictor.Options(2, true, 100).withCpuWorkspaces(1))) {
                float[] row = java.util.Arrays.copyOf(x, 20);
                float[] wantRow = one.predict(row), wantRows = one.predict(x); // 3 rows: chunks of 2 and 1, direct
                ExecutorService pool = Executors.newFixedThreadPool(8);
                AtomicInteger wrong = new AtomicInteger();
                List<Future<?>> fs = new ArrayList<>();
                for (int t = 0; t < 8; t++) {
                    boolean single = t % 2 == 0;
                    fs.add(pool.submit(() -> {
                        for (int i = 0; i < 200; i++) {
                            float[] got = one.predict(single ? row : x);
                            float[] expected = single ? wantRow : wantRows;
                            for (int j = 0; j < got.length; j++) {
                                if (Math.abs(got[j] - expected[j]) > 1e-5 * Math.max(1, Math.abs(expected[j]))) wrong.incrementAndGet();
                            }
                        }
                    }));
                }
                for (Future<?> f : fs) f.get();
                pool.shutdown();
                assertEquals(0, wrong.get(), "answers off by more than 1e-5 (batched rows may round differently)");
                assertEquals(1, one.cpuWorkspacesCreated());
            }
        }
    }

    @Test
    void badInputAndClose() throws Exception {
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), 4)) {
            Predictor p = Predictor.of(m, Predictor.Options.defaults());
            var e = assertThrows(IllegalArgumentException.class, () -> p.predict(new float[19], new float[5]));
            assertTrue(e.getMessage().contains("holds 19 floats; expected a positive multiple of 20"), e.getMessage());
            var o = assertThrows(IllegalArgumentException.class, () -> p.predict(new float[40], new float[5]));
            assertTrue(o.getMessage().contains("2 rows need 10"), o.getMessage());
            // Close while 8 threads call: each call finishes with a right answer or fails with "closed"; none crashes.
            float[] in = random(20, 3);
            float[] want = p.predict(in);
            ExecutorService pool = Executors.newFixedThreadPool(8);
            AtomicInteger ok = new AtomicInteger(), refused = new AtomicInteger(), wrong = new AtomicInteger();
            List<Future<?>> fs = new ArrayList<>();
            for (int t = 0; t < 8; t++) {
                fs.add(pool.submit(() -> {
                    float[] out = new float[5];
                    for (int i = 0; i < 100_000; i++) {
                        try {
                            p.predict(in, out);
                            if (java.util.Arrays.equals(out, want)) ok.incrementAndGet();
                            else wrong.incrementAndGet();
                        } catch (IllegalStateException closed) {
                            refused.incrementAndGet();
                            return;
                        }
                    }
                }));
            }
            Thread.sleep(50);
            p.close();
            pool.shutdown();
            for (Future<?> f : fs) f.get();
            assertEquals(0, wrong.get());
            assertTrue(ok.get() > 0, "calls before close succeeded");
            var closed = assertThrows(IllegalStateException.class, () -> p.predict(in));
            assertEquals("predictor is closed", closed.getMessage());
        }
    }

    /** Dynamic batching: 16 threads of single-row calls, gathered into batches, answer as per-row calls do (within float rounding of a different batch). */
    @Test
    void dynamicBatchingAnswersEveryCaller() throws Exception {
        try (Model m = ModelSpec.parse("mlp", MLP).build(CpuBackend.get(), 4);
             Predictor direct = Predictor.of(m, Predictor.Options.defaults());
             Predictor batched = Predictor.of(m, new Predictor.Options(32, true, 500))) {
            int rows = 64;
            float[] x = random(rows * 20, 8);
            float[][] want = new float[rows][];
            for (int r = 0; r < rows; r++) want[r] = direct.predict(java.util.Arrays.copyOfRange(x, r * 20, r * 20 + 20));
            ExecutorService pool = Executors.newFixedThreadPool(16);
            AtomicInteger bad = new AtomicInteger();
            List<Future<?>> fs = new ArrayList<>();
            for (int t = 0; t < 16; t++) {
                int seed = t;
                fs.add(pool.submit(() -> {
                    Random rnd = new Random(seed);
                    float[] in = new float[20], out = new float[5];
                    for (int i = 0; i < 300; i++) {
                        int r = rnd.nextInt(rows);
                        System.arraycopy(x, r * 20, in, 0, 20);
                        batched.predict(in, out);
                        for (int j = 0; j < 5; j++) if (Math.abs(out[j] - want[r][j]) > 1e-5 * Math.max(1, Math.abs(want[r][j]))) bad.incrementAndGet();
                    }
                }));
            }
            for (Future<?> f : fs) f.get();
            pool.shutdown();
            assertEquals(0, bad.get(), "batched answers off by more than 1e-5");
        }
    }

    /**
     * intraOpThreads 0 on the oneDNN engine splits a call between the caller and IntraOpPool's
     * helpers (a batch of 8 or more rows into row blocks on workspaces of their own, one row's large
     * gemvs into feature blocks): the answers equal the caller-thread Predictor's within float32
     * rounding (the blocks run the same kernels on fewer rows), for an MLP with 784 x 800 layers
     * (large enough to split one row's gemv) and the CNN fixture (convolutions, pooling, batch norm
     * per block), also in bf16 (each block rounds its own rows), for one caller and for four at once.
     * On another engine the same calls run unsplit.
     */
    @Test
    void intraOpSplitGivesTheCallerThreadNumbers() throws Exception {
        String wide = "{\"input\": [784], \"layers\": [{\"type\": \"linear\", \"in\": 784, \"out\": 800}, {\"type\": \"relu\"},"
            + "{\"type\": \"linear\", \"in\": 800, \"out\": 800}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 800, \"out\": 10}]}";
        try (Model mlp = ModelSpec.parse("wide", wide).build(CpuBackend.get(), 11);
             Model cnn = ModelSpec.read(FIXTURE.resolve("cnn.json")).build(CpuBackend.get(), 0)) {
            cnn.load(FIXTURE.resolve("cnn.safetensors"));
            for (Object[] kase : new Object[][] {{mlp, org.distill4j.core.DType.F32}, {cnn, org.distill4j.core.DType.F32}, {mlp, org.distill4j.core.DType.BF16}}) {
                Model m = (Model) kase[0];
                org.distill4j.core.DType dtype = (org.distill4j.core.DType) kase[1];
                int in = (int) Tensor.numel(m.inputShape()), out = (int) Tensor.numel(m.outputShape());
                int[] rowCounts = {1, 2, 7, 8, 9, 32, 33, 64};
                float[][] x = new float[rowCounts.length][], want = new float[rowCounts.length][];
                try (Predictor callerThread = Predictor.of(m, new Predictor.Options(64, false, 0, 1).withComputeDtype(dtype))) {
                    for (int i = 0; i < rowCounts.length; i++) {
                        x[i] = random(rowCounts[i] * in, 100 + i);
                        want[i] = callerThread.predict(x[i]);
                    }
                }
                try (Predictor split = Predictor.of(m, new Predictor.Options(64, false, 0, 0).withComputeDtype(dtype))) {
                    for (int i = 0; i < rowCounts.length; i++) {
                        assertClose(want[i], split.predict(x[i]), m.spec().source() + " " + dtype + ", " + rowCounts[i] + " rows, one caller");
                    }
                    ExecutorService pool = Executors.newFixedThreadPool(4);
                    List<Future<?>> fs = new ArrayList<>();
                    for (int t = 0; t < 4; t++) {
                        int seed = t;
                        fs.add(pool.submit(() -> {
                            Random rnd = new Random(seed);
                            for (int c = 0; c < 60; c++) {
                                int i = rnd.nextInt(rowCounts.length);
                                float[] got = new float[rowCounts[i] * out];
                                split.predict(x[i], got);
                                assertClose(want[i], got, m.spec().source() + " " + dtype + ", " + rowCounts[i] + " rows, caller " + seed);
                            }
                            return null;
                        }));
                    }
                    for (Future<?> f : fs) f.get();
                    pool.shutdown();
                }
            }
        }
    }
}
