package org.distill4j.bench;

import java.util.concurrent.TimeUnit;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.DataLoader;
import org.distill4j.core.data.Synthetic;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The data loader in JMH: one shuffled epoch of 8,192 samples of 784 floats (MNIST-sized, in
 * memory) through the double-buffered DataLoader, reported per sample. IoBench measures the same
 * on the real IDX files; this one needs no data on disk.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class LoaderBenchmark {
    private static final int SAMPLES = 8192;

    @Param({"64", "256"})
    int batch;

    private ArrayDataset data;
    private DataLoader loader;
    private int epoch;

    @Setup
    public void setup() {
        data = Synthetic.task(1, 784, 10, 2, 1.5f, 1f).sample(SAMPLES, 1, 0f);
        loader = new DataLoader(data, CpuBackend.get(), batch, true, 1, false);
    }

    @TearDown
    public void tearDown() {
        loader.close();
    }

    /** samples/s: one epoch per invocation. */
    @Benchmark
    @OperationsPerInvocation(SAMPLES)
    public long epoch() {
        loader.start(epoch++, 0);
        long n = 0;
        while (loader.hasNext()) n += loader.next().rows();
        return n;
    }
}
