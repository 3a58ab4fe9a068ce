package org.distill4j.bench;

import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
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
 * The CPU fused distillation loss (Hinton KL, reverse KL and JSD, T = 4, alpha = 0.9, labels, gradient
 * to a separate buffer), on the float fast path and on the double oracle, next to a memory copy of
 * the same bytes (copyBaseline does not depend on the divergence). Bytes moved: student and teacher read, gradient
 * written: 3 x 4 x rows x classes; the copy baseline moves the same (one tensor's worth read and
 * written, plus the third read by copying into it again). GB/s = bytes / time.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class DistillationLossBenchmark {
    @Param({"4096x1000", "512x32000"})
    public String shape;

    /** kl (Hinton), reverse-kl, jsd (beta 0.5: TRL GKD's default); T = 4, alpha = 0.9. */
    @Param({"kl", "reverse-kl", "jsd"})
    public String divergence;

    private final CpuBackend cpu = CpuBackend.get();
    private Tensor s, t, y, grad, loss;
    private DistillationLoss cfg;

    @Setup
    public void setup() {
        cfg = new DistillationLoss(Divergence.parse(divergence), 4f, 0.9f, 0.5f, -100);
        String[] p = shape.split("x");
        int rows = Integer.parseInt(p[0]), cols = Integer.parseInt(p[1]);
        s = cpu.empty(DType.F32, rows, cols);
        t = cpu.empty(DType.F32, rows, cols);
        grad = cpu.empty(DType.F32, rows, cols);
        loss = cpu.empty(DType.F32, 1);
        y = cpu.empty(DType.I64, rows);
        cpu.uniform(s, -5, 5, 1, 0);
        cpu.uniform(t, -5, 5, 2, 0);
        long[] labels = new long[rows];
        for (int r = 0; r < rows; r++) labels[r] = (r * 7919L) % cols;
        y.copyFrom(labels);
    }

    @TearDown
    public void tearDown() {
        for (Tensor x : new Tensor[] {s, t, y, grad, loss}) x.close();
    }

    /** The backend's path: the float fast path (our vectorised C kernel). */
    @Benchmark
    public void distillationLoss() {
        cpu.distillationLoss(s, t, y, cfg, 0, loss, grad);
    }

    /** The double oracle (the reference; the path when the kernel library is missing). */
    @Benchmark
    public void distillationLossOracle() {
        cpu.referenceDistillationLoss(s, t, y, cfg, 0, loss, grad);
    }

    @Benchmark
    public void copyBaseline() {
        MemorySegment.copy(s.data(), 0, grad.data(), 0, s.byteSize());
        MemorySegment.copy(t.data(), 0, grad.data(), 0, s.byteSize() / 2);
    }
}
