package org.distill4j.bench;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.blas.cblas_h;
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
 * What one call through Distill4J's generated bindings costs, warm, next to the C baseline in
 * bench/native/downcall_baseline.c (the same functions called through a dlsym'd pointer). Both
 * are run by bench/run-downcall.sh; figures go to bench/RESULTS.md.
 *
 * <ul>
 *   <li>{@code trivialCall}: openblas_get_num_threads(), a getter: the pure cost of crossing into C
 *       and back (thread-state transition, argument shuffling);</li>
 *   <li>{@code callWithSegments}: cblas_sdot(1, x, 1, y, 1) with two off-heap segments, adding the
 *       liveness checks FFM makes on segment arguments;</li>
 *   <li>{@code javaBaseline}: the same dot product in Java, the floor of the harness itself.</li>
 * </ul>
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 5, time = 1)
@Measurement(iterations = 5, time = 1)
// --sun-misc-unsafe-memory-access=allow: JMH itself still uses sun.misc.Unsafe; keeps JDK 25 quiet.
@Fork(value = 3, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class DowncallBenchmark {
    private Arena arena;
    private MemorySegment x;
    private MemorySegment y;

    @Setup
    public void setup() {
        NativeLibraries.load(NativeLibraries.Library.OPENBLAS);
        arena = Arena.ofConfined();
        x = arena.allocateFrom(JAVA_FLOAT, 1.5f);
        y = arena.allocateFrom(JAVA_FLOAT, 2f);
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public int trivialCall() {
        return cblas_h.openblas_get_num_threads();
    }

    @Benchmark
    public float callWithSegments() {
        return cblas_h.cblas_sdot(1, x, 1, y, 1);
    }

    @Benchmark
    public float javaBaseline() {
        return x.get(JAVA_FLOAT, 0) * y.get(JAVA_FLOAT, 0);
    }
}
