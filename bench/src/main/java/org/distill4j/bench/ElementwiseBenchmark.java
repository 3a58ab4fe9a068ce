package org.distill4j.bench;

import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.distill4j.core.Activation;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * CPU elementwise and softmax ops on 4M floats (a [4096, 1024] batch of logits, 16 MiB per tensor)
 * next to a plain memory copy of the same size. Bytes moved per op: copy 32 MiB (read + write),
 * add 48 MiB, scale 32 MiB, relu 32 MiB, softmax 32 MiB (one read and one write counted), so
 * GB/s = bytes / time.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class ElementwiseBenchmark {
    private static final int ROWS = 4096, COLS = 1024;
    private final Backend cpu = CpuBackend.get();
    private Tensor a, b, out;

    @Setup
    public void setup() {
        a = cpu.empty(DType.F32, ROWS, COLS);
        b = cpu.empty(DType.F32, ROWS, COLS);
        out = cpu.empty(DType.F32, ROWS, COLS);
        cpu.uniform(a, -4, 4, 1, 0);
        cpu.uniform(b, -4, 4, 2, 0);
    }

    @TearDown
    public void tearDown() {
        a.close();
        b.close();
        out.close();
    }

    @Benchmark
    public void memcpyBaseline() {
        MemorySegment.copy(a.data(), 0, out.data(), 0, a.byteSize());
    }

    @Benchmark
    public void add() {
        cpu.add(a, b, out);
    }

    @Benchmark
    public void scale() {
        cpu.scale(0.5f, out);
    }

    @Benchmark
    public void relu() {
        cpu.activation(Activation.RELU, 0, a, out);
    }

    @Benchmark
    public void softmax() {
        cpu.softmax(a, out);
    }
}
