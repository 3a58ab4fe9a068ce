package org.distill4j.bench;

import java.util.concurrent.TimeUnit;
import org.distill4j.bindings.blas.cblas_h;
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
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * CPU gemm at MLP layer shapes through Distill4J (CpuBackend.gemm: shape checks, then OpenBLAS) next to
 * the same OpenBLAS call made directly on the same buffers: the ratio is our overhead.
 * GFLOP/s = 2 m n k / time. Shapes "m x k x n": batch x in x out of a Linear layer.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class GemmBenchmark {
    @Param({"256x784x1200", "256x1200x1200", "256x800x800"})
    public String shape;

    private final Backend cpu = CpuBackend.get();
    private int m, k, n;
    private Tensor a, b, c;

    @Setup
    public void setup() {
        String[] s = shape.split("x");
        m = Integer.parseInt(s[0]);
        k = Integer.parseInt(s[1]);
        n = Integer.parseInt(s[2]);
        a = cpu.empty(DType.F32, m, k);
        b = cpu.empty(DType.F32, k, n);
        c = cpu.empty(DType.F32, m, n);
        cpu.uniform(a, -1, 1, 1, 0);
        cpu.uniform(b, -1, 1, 2, 0);
    }

    @TearDown
    public void tearDown() {
        a.close();
        b.close();
        c.close();
    }

    @Benchmark
    public void distill4j() {
        cpu.gemm(false, false, 1f, a, b, 0f, c);
    }

    @Benchmark
    public void openblasDirect() {
        cblas_h.cblas_sgemm(cblas_h.CblasRowMajor, cblas_h.CblasNoTrans, cblas_h.CblasNoTrans, m, n, k, 1f, a.data(), k, b.data(), n, 0f, c.data(), n);
    }
}
