package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.infer.Predictor;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The Predictor on CUDA (pinned staging, a captured graph per batch size) against the CPU
 * Predictor on the interop CNN, from 8 threads, with and without dynamic batching. Tag "gpu".
 */
@Tag("gpu")
class GpuPredictorTest {
    private static final Path FIXTURE = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/model").normalize();

    @Test
    void cudaPredictorFollowsTheCpu() throws Exception {
        CudaBackend gpu = Gpus.openOrSkip();
        gpu.setMathMode(CudaBackend.MathMode.STRICT_FP32);
        Path spec = FIXTURE.resolve("cnn.json"), w = FIXTURE.resolve("cnn.safetensors");
        try (gpu; Predictor cpu = Predictor.load(CpuBackend.get(), spec, w, Predictor.Options.defaults())) {
            for (boolean dynamic : new boolean[] {false, true}) {
                Predictor cuda = Predictor.load(gpu, spec, w, new Predictor.Options(16, dynamic, 300));
                try {
                    int in = (int) cuda.inputSize();
                    long seed = TestSeeds.seed(GpuPredictorTest.class);
                    Random r = new Random(seed);
                    float[] batch = new float[7 * in];
                    for (int i = 0; i < batch.length; i++) batch[i] = (float) r.nextGaussian();
                    close(cpu.predict(batch), cuda.predict(batch), "batch of 7, dynamic " + dynamic);
                    ExecutorService pool = Executors.newFixedThreadPool(8);
                    List<Future<?>> fs = new ArrayList<>();
                    for (int t = 0; t < 8; t++) {
                        long threadSeed = seed + 1 + t;  // each thread's inputs follow from the printed seed
                        fs.add(pool.submit(() -> {
                            Random rr = new Random(threadSeed);
                            float[] x = new float[in];
                            for (int k = 0; k < 200; k++) {
                                for (int i = 0; i < in; i++) x[i] = (float) rr.nextGaussian();
                                close(cpu.predict(x), cuda.predict(x), "single row");
                            }
                        }));
                    }
                    for (Future<?> f : fs) f.get();
                    pool.shutdown();
                } finally {
                    cuda.close();
                }
                assertThrows(IllegalStateException.class, () -> cuda.predict(new float[(int) cuda.inputSize()]));
            }
        }
    }

    private static void close(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length);
        for (int i = 0; i < want.length; i++) assertEquals(want[i], got[i], 1e-4 * Math.max(1, Math.abs(want[i])), what + " [" + i + "]");
    }
}
