package org.distill4j.bench;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.TimeUnit;
import org.distill4j.core.Bf16;
import org.distill4j.core.cpu.CpuBlas;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
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
 * A frozen teacher's matrix products in float32 ({@link CpuBlas#sgemm}) against bf16
 * ({@link CpuBlas#gemmBf16}: bf16 operands, float32 sums; oneDNN's bf16 matmul on the oneDNN
 * engine), x W^T as nn.Linear and the lm_head compute it. Shapes "m x k x n": tokens x in x out,
 * from the lm-kd-step teacher (GPT-2, 384 wide, B 4 x T 128 = 512 tokens): c_attn, c_fc, c_proj,
 * and one automatic loss chunk (128 rows) of the 50,257-wide lm_head. Run by
 * {@code BENCHMARKS=Bf16GemmBenchmark bench/run-cpu-ops.sh}.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class Bf16GemmBenchmark {
    @Param({"512x384x1152", "512x384x1536", "512x1536x384", "128x384x50257"})
    public String shape;

    private int m, k, n;
    private Arena arena;
    private MemorySegment x, w, xh, wh, out;

    @Setup(Level.Trial)
    public void setup() {
        String[] s = shape.split("x");
        m = Integer.parseInt(s[0]);
        k = Integer.parseInt(s[1]);
        n = Integer.parseInt(s[2]);
        arena = Arena.ofShared();
        x = arena.allocate((long) m * k * Float.BYTES, 64);
        w = arena.allocate((long) n * k * Float.BYTES, 64);
        xh = arena.allocate((long) m * k * Short.BYTES, 64);
        wh = arena.allocate((long) n * k * Short.BYTES, 64);
        out = arena.allocate((long) m * n * Float.BYTES, 64);
        for (long i = 0; i < (long) m * k; i++) {
            float v = (float) Math.sin(i * 0.37);
            x.setAtIndex(ValueLayout.JAVA_FLOAT, i, v);
            xh.setAtIndex(ValueLayout.JAVA_SHORT, i, Bf16.fromFloat(v));
        }
        for (long i = 0; i < (long) n * k; i++) {
            float v = (float) Math.cos(i * 0.11) * 0.05f;
            w.setAtIndex(ValueLayout.JAVA_FLOAT, i, v);
            wh.setAtIndex(ValueLayout.JAVA_SHORT, i, Bf16.fromFloat(v));
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void f32() {
        CpuBlas.sgemm(false, true, m, n, k, 1f, x, k, w, k, 0f, out, n);
    }

    @Benchmark
    public void bf16() {
        CpuBlas.gemmBf16(false, true, m, n, k, xh, k, wh, k, 0f, out, n);
    }
}
