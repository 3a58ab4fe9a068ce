package org.distill4j.core.lm;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Locale;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.nn.Parameter;

/**
 * Feature distillation between decoders: student hidden state S against teacher hidden state T
 * (numbered as transformers' output_hidden_states: 0 the embeddings, i the output of layer i - 1,
 * the layer count the final norm's output), per token. When the widths differ a learned linear
 * projection P [Dt, Ds] (no bias) maps the student's state to the teacher's width; equal widths
 * compare directly. The term, over the step's counted tokens r:
 *
 * <pre>
 *   mse:    weight * sum_r ||a_r - t_r||^2 / (normalizer * Dt)      a_r = P h_r (or h_r)
 *   cosine: weight * sum_r (1 - cos(a_r, t_r)) / normalizer         (Minitron's choice on the final norm's output)
 * </pre>
 */
public final class DecoderHint implements AutoCloseable {
    /** The loss that compares the two hidden states. */
    public enum Kind {
        MSE, COSINE;

        public static Kind parse(String s) {
            return switch (s.toLowerCase(Locale.ROOT)) {
                case "mse" -> MSE;
                case "cosine" -> COSINE;
                default -> throw new IllegalArgumentException("--hint-loss must be mse or cosine, got '" + s + "'");
            };
        }
    }

    /** --hint S:T[:W]: student hidden state S, teacher hidden state T, weight W (default 1). */
    public record Spec(int studentIndex, int teacherIndex, float weight, Kind kind) {
        public Spec {
            if (!(weight > 0) || Float.isInfinite(weight)) throw new IllegalArgumentException("--hint weight must be a finite number > 0, got " + weight);
        }

        public static Spec parse(String text, Kind kind) {
            String[] parts = text.split(":", -1);
            if (parts.length < 2 || parts.length > 3) throw new IllegalArgumentException("--hint must be S:T or S:T:W (hidden-state indices, weight), got '" + text + "'");
            try {
                return new Spec(Integer.parseInt(parts[0].trim()), Integer.parseInt(parts[1].trim()), parts.length == 3 ? Float.parseFloat(parts[2].trim()) : 1f, kind);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("--hint must be S:T or S:T:W with integer S and T and a number W, got '" + text + "'");
            }
        }
    }

    private final Spec spec;
    private final long ds, dt;
    private final Parameter projection; // [Dt, Ds], or null for equal widths

    /** Checks the indices against both models and makes the projection (N(0, 1/sqrt(Ds)) from the seed) when the widths differ. */
    public DecoderHint(Backend backend, Spec spec, DecoderModel student, DecoderModel teacher, long seed) {
        DecoderOpChecks.hostOnly("a hidden-state hint", "its projection and loss run DecoderOps on host memory", backend);
        student.checkHiddenIndex(spec.studentIndex(), "--hint student");
        teacher.checkHiddenIndex(spec.teacherIndex(), "--hint teacher");
        this.spec = spec;
        this.ds = student.config().hidden();
        this.dt = teacher.config().hidden();
        if (ds == dt) {
            projection = null;
        } else {
            projection = new Parameter("hint.proj.weight", backend.zeros(DType.F32, dt, ds), true);
            // A seed of its own, so adding a hint does not change the student's initialisation.
            DecoderModel.normal(projection.value(), 1 / Math.sqrt(ds), seed ^ 0x68696E74L, 0);
        }
    }

    public Spec spec() {
        return spec;
    }

    /** The projection's parameter (trained with the student), or none for equal widths. */
    public List<Parameter> parameters() {
        return projection == null ? List.of() : List.of(projection);
    }

    public String describe() {
        return String.format(Locale.ROOT, "hint: student hidden state %d -> teacher hidden state %d, %s, weight %s%s", spec.studentIndex(), spec.teacherIndex(),
            spec.kind().name().toLowerCase(Locale.ROOT), spec.weight(), projection == null ? "" : ", learned projection " + ds + " -> " + dt);
    }

    /**
     * The hint term of one micro-batch, divided by {@code normalizer}; writes dL/dh_s into
     * {@code dStudent} F32 [N, Ds] (overwritten) and accumulates the projection's gradient.
     * Rows whose target is -100 count for nothing.
     */
    public double loss(Tensor student, Tensor teacher, long[] targets, long normalizer, Tensor dStudent) {
        long n = targets.length;
        MemorySegment hs = student.data(), ht = teacher.data(), dhs = dStudent.data();
        try (Arena arena = Arena.ofConfined()) {
            // a = P h_s [N, Dt] and dL/da, native (the projection's gemm is a downcall)
            MemorySegment as = arena.allocate(n * dt * Float.BYTES, 64), das = arena.allocate(n * dt * Float.BYTES, 64);
            if (projection != null) {
                DecoderOps.projectionForward(as, 0, dt, hs, ds, projection.value().data(), null, n, ds, dt, false);
            } else {
                MemorySegment.copy(hs, 0, as, 0, n * dt * Float.BYTES);
            }
            return lossAndGradient(as, ht, das, n, targets, normalizer, hs, dhs);
        }
    }

    private double lossAndGradient(MemorySegment as, MemorySegment ht, MemorySegment das, long n, long[] targets, long normalizer, MemorySegment hs,
                                   MemorySegment dhs) {
        double sum = 0;
        for (int r = 0; r < n; r++) {
            if (targets[r] == -100) {
                for (long j = 0; j < dt; j++) das.setAtIndex(JAVA_FLOAT, (long) r * dt + j, 0f);
                continue;
            }
            long o = (long) r * dt;
            if (spec.kind() == Kind.MSE) {
                double scale = 2.0 * spec.weight() / ((double) normalizer * dt);
                for (long j = 0; j < dt; j++) {
                    double diff = f(as, o + j) - f(ht, o + j);
                    sum += diff * diff;
                    das.setAtIndex(JAVA_FLOAT, o + j, (float) (scale * diff));
                }
            } else {
                double dot = 0, na = 0, nt = 0;
                for (long j = 0; j < dt; j++) {
                    double x = f(as, o + j), y = f(ht, o + j);
                    dot += x * y;
                    na += x * x;
                    nt += y * y;
                }
                // torch.nn.functional.cosine_similarity clamps each norm at eps = 1e-8.
                double la = Math.max(Math.sqrt(na), 1e-8), lt = Math.max(Math.sqrt(nt), 1e-8), cos = dot / (la * lt);
                sum += 1 - cos;
                double scale = spec.weight() / (double) normalizer;
                // d(1 - cos)/da = -(t / (|a||t|) - cos * a / |a|^2)
                for (long j = 0; j < dt; j++) das.setAtIndex(JAVA_FLOAT, o + j, (float) (-scale * (f(ht, o + j) / (la * lt) - cos * f(as, o + j) / (la * la))));
            }
        }
        if (projection != null) {
            DecoderOps.projectionBackward(dhs, ds, false, projection.grad().data(), null, das, 0, dt, hs, ds, projection.value().data(), n, ds, dt, false);
        } else {
            MemorySegment.copy(das, 0, dhs, 0, n * dt * Float.BYTES);
        }
        double w = spec.kind() == Kind.MSE ? spec.weight() / ((double) normalizer * dt) : spec.weight() / (double) normalizer;
        return sum * w;
    }

    private static float f(MemorySegment s, long i) {
        return s.getAtIndex(JAVA_FLOAT, i);
    }

    @Override
    public void close() {
        if (projection != null) projection.close();
    }
}
