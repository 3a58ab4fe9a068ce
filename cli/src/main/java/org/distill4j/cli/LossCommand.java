package org.distill4j.cli;

import java.math.BigDecimal;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.io.Npy;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill loss}: the fused distillation loss (and optionally its gradient) of .npy logits,
 * for checking numerics against one's own Python code. The last line on stdout is the loss alone.
 */
@Command(name = "loss", mixinStandardHelpOptions = true,
    description = "Compute the distillation loss alpha*T^2*D(p_t, p_s) + (1-alpha)*CE(s, y) of student and teacher logits "
        + "(float32 [N, C] .npy files) and, with --grad-out, its gradient dL/dS.",
    footer = {"", "Example:",
        "  distill loss --student s.npy --teacher t.npy --labels y.npy --divergence kl --temperature 4 --alpha 0.9 --grad-out g.npy",
        "  distill loss --student s.npy --teacher topk_values.npy --teacher-indices topk_indices.npy --labels y.npy   (a top-k teacher)",
        "", "The last line printed is the loss alone. Exit code 2 on bad input, with one line saying what is wrong."})
final class LossCommand implements Callable<Integer> {
    @Option(names = "--student", required = true, paramLabel = "S.npy", description = "student logits, float32 [N, C]")
    Path student;

    @Option(names = "--teacher", required = true, paramLabel = "T.npy",
        description = "teacher logits, float32 [N, C]; with --teacher-indices the kept logits alone, float32 [N, k]")
    Path teacher;

    @Option(names = "--teacher-indices", paramLabel = "I.npy",
        description = "a top-k teacher (a cached teacher's k largest logits a row): their classes, int64 or int32 [N, k], each in [0, C) "
            + "and distinct within its row; the classes not kept carry no teacher mass (--divergence kl, or jsd with beta < 1)")
    Path teacherIndices;

    @Option(names = "--labels", paramLabel = "Y.npy", description = "labels, int64 or int32 [N]; without them the loss is the soft term alone")
    Path labels;

    @Option(names = "--divergence", defaultValue = "kl", paramLabel = "kl|reverse-kl|jsd|mse", description = "soft term (default: ${DEFAULT-VALUE})")
    String divergence;

    @Option(names = "--temperature", defaultValue = "4", description = "T > 0 (default: ${DEFAULT-VALUE})")
    float temperature;

    @Option(names = "--alpha", description = "weight of the soft term in [0, 1] (default: 0.9 with --labels; needs --labels)")
    Float alpha;

    @Option(names = "--beta", defaultValue = "0.5", description = "JSD mixture weight in [0, 1] (default: ${DEFAULT-VALUE})")
    float beta;

    @Option(names = "--ignore-index", defaultValue = "-100", description = "label of rows that do not count (default: ${DEFAULT-VALUE})")
    long ignoreIndex;

    @Option(names = "--grad-out", paramLabel = "G.npy", description = "write dL/dS here, float32 [N, C]")
    Path gradOut;

    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda",
        description = "where to compute (default: ${DEFAULT-VALUE}; the CPU computes in double, the reference the fast paths are tested against)")
    String device;

    @Option(names = "--dtype", defaultValue = "f32", paramLabel = "f32|bf16",
        description = "logits as given (f32), or rounded to bfloat16 first, as a bf16 model hands them over; the gradient file stays float32 "
            + "(default: ${DEFAULT-VALUE})")
    String dtype;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        Divergence div = Divergence.parse(divergence);
        if (alpha != null && labels == null) throw new IllegalArgumentException("--alpha needs --labels (without labels the loss is the soft term alone)");
        float a = alpha != null ? alpha : labels != null ? 0.9f : 1f;
        DistillationLoss cfg = new DistillationLoss(div, temperature, a, beta, ignoreIndex);
        Devices.check(device);
        DType logitType = switch (dtype) {
            case "f32" -> DType.F32;
            case "bf16" -> DType.BF16;
            default -> throw new IllegalArgumentException("--dtype " + dtype + ": expected f32 or bf16");
        };
        Npy.Array s = logits(student, "--student"), t = logits(teacher, "--teacher");
        int rows = (int) s.shape()[0], cols = (int) s.shape()[1];
        float[] teacherLogits;
        int kept = cols;
        if (teacherIndices == null) {
            if (!Arrays.equals(s.shape(), t.shape())) {
                boolean topK = t.shape()[0] == rows && t.shape()[1] < cols;
                throw new IllegalArgumentException(teacher + ": shape " + Arrays.toString(t.shape()) + " does not match the student's " + Arrays.toString(s.shape())
                    + (topK ? " (a top-k teacher's kept logits? give their classes with --teacher-indices)" : ""));
            }
            teacherLogits = t.toFloats();
        } else {
            cfg.requireTopKTeacherSupport("--teacher-indices");
            kept = (int) t.shape()[1];
            teacherLogits = denseTopK(t, s.shape());
        }
        long[] y = null;
        if (labels != null) {
            Npy.Array l = Npy.read(labels);
            if (l.type() != Npy.Type.I64 && l.type() != Npy.Type.I32) {
                throw new IllegalArgumentException(labels + ": labels must be int64 or int32, got " + l.type().name().toLowerCase(java.util.Locale.ROOT));
            }
            if (l.shape().length != 1 || l.shape()[0] != rows) {
                throw new IllegalArgumentException(labels + ": shape " + Arrays.toString(l.shape()) + ", expected [" + rows + "] (one label per row)");
            }
            y = l.toLongs(labels.toString());
            for (int r = 0; r < rows; r++) {
                if (y[r] != ignoreIndex && (y[r] < 0 || y[r] >= cols)) {
                    throw new IllegalArgumentException(labels + ": label " + y[r] + " at row " + r + " is outside [0, " + cols + ") and is not --ignore-index "
                        + ignoreIndex);
                }
            }
        }
        try (Backend backend = Devices.open(device);
             Tensor ts = backend.empty(logitType, rows, cols).copyFrom(s.toFloats()); Tensor tt = backend.empty(logitType, rows, cols).copyFrom(teacherLogits);
             Tensor ty = y == null ? null : backend.empty(DType.I64, rows).copyFrom(y); Tensor loss = backend.empty(DType.F32, 3);
             Tensor grad = gradOut == null ? null : backend.empty(logitType, rows, cols)) {
            // On the CPU, the double oracle: this command is for checking numerics against other code.
            if (backend instanceof CpuBackend cpu) cpu.referenceDistillationLoss(ts, tt, ty, cfg, 0, loss, grad);
            else backend.distillationLoss(ts, tt, ty, cfg, 0, loss, grad);
            float[] l = loss.toFloatArray();
            if (grad != null) Npy.writeFloats(gradOut, grad.toFloatArray(), rows, cols);
            var out = spec.commandLine().getOut();
            out.println("divergence " + div.cliName() + ", T " + temperature + ", alpha " + a + (div == Divergence.JSD ? ", beta " + beta : "")
                + ", rows " + rows + ", classes " + cols + (teacherIndices != null ? ", teacher top-" + kept : "") + ", device " + backend.name()
                + (logitType == DType.BF16 ? ", logits bf16" : ""));
            out.println("soft term " + decimal(l[1]) + ", hard term " + decimal(l[2]));
            if (grad != null) out.println("gradient written to " + gradOut);
            out.println(decimal(l[0]));
        }
        return 0;
    }

    /**
     * The dense teacher [N, C] of a top-k one: values [N, k] (t, read from --teacher) at the classes
     * in --teacher-indices, -inf elsewhere (no mass: docs/distillation-loss.md, "Top-k teachers"),
     * after checking the indices' type, shape, range and distinctness.
     */
    private float[] denseTopK(Npy.Array values, long[] studentShape) throws java.io.IOException {
        int rows = (int) studentShape[0], cols = (int) studentShape[1];
        if (!Files.exists(teacherIndices)) throw new IllegalArgumentException("--teacher-indices " + teacherIndices + ": no such file");
        Npy.Array idx = Npy.read(teacherIndices);
        if (idx.type() != Npy.Type.I64 && idx.type() != Npy.Type.I32) {
            throw new IllegalArgumentException(teacherIndices + ": teacher indices must be int64 or int32, got " + idx.type().name().toLowerCase(java.util.Locale.ROOT));
        }
        if (!Arrays.equals(idx.shape(), values.shape())) {
            throw new IllegalArgumentException(teacherIndices + ": shape " + Arrays.toString(idx.shape()) + " does not match the teacher's kept logits "
                + teacher + " " + Arrays.toString(values.shape()) + " (one class per kept logit)");
        }
        if (values.shape()[0] != rows || values.shape()[1] > cols) {
            throw new IllegalArgumentException(teacher + ": shape " + Arrays.toString(values.shape()) + ", expected [" + rows + ", k] with k <= " + cols
                + " (the student's rows, at most its classes)");
        }
        int k = (int) values.shape()[1];
        long[] classes = idx.toLongs(teacherIndices.toString());
        float[] kept = values.toFloats(), dense = new float[rows * cols];
        Arrays.fill(dense, Float.NEGATIVE_INFINITY);
        boolean[] seen = new boolean[cols];
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < k; j++) {
                long c = classes[r * k + j];
                if (c < 0 || c >= cols) {
                    throw new IllegalArgumentException(teacherIndices + ": index " + c + " at row " + r + ", position " + j + " is outside [0, " + cols + ")");
                }
                if (seen[(int) c]) throw new IllegalArgumentException(teacherIndices + ": class " + c + " appears twice in row " + r + " (top-k classes are distinct)");
                seen[(int) c] = true;
                dense[r * cols + (int) c] = kept[r * k + j];
            }
            for (int j = 0; j < k; j++) seen[(int) classes[r * k + j]] = false;
        }
        return dense;
    }

    private static Npy.Array logits(Path file, String option) throws java.io.IOException {
        if (!Files.exists(file)) throw new IllegalArgumentException(option + " " + file + ": no such file");
        Npy.Array a = Npy.read(file);
        if (a.type() != Npy.Type.F32) throw new IllegalArgumentException(file + ": logits must be float32, got " + a.type().name().toLowerCase(java.util.Locale.ROOT));
        if (a.shape().length != 2 || a.shape()[0] < 1 || a.shape()[1] < 1) {
            throw new IllegalArgumentException(file + ": logits must be 2-D [N, C] with N, C >= 1, got shape " + Arrays.toString(a.shape()));
        }
        if (a.numel() > Integer.MAX_VALUE) throw new IllegalArgumentException(file + ": more than 2^31 - 1 elements");
        float[] v = a.toFloats();
        for (int i = 0; i < v.length; i++) {
            if (!Float.isFinite(v[i])) {
                boolean topKHint = option.equals("--teacher") && v[i] == Float.NEGATIVE_INFINITY;
                throw new IllegalArgumentException(file + ": element " + i + " (row " + i / a.shape()[1] + ", column " + i % a.shape()[1] + ") is " + v[i]
                    + "; logits must be finite" + (topKHint ? " (a top-k teacher with -inf at the classes not kept? give the kept logits [N, k] "
                        + "with --teacher-indices)" : ""));
            }
        }
        return a;
    }

    /** A float as a plain decimal (no exponent), with the digits that identify it. */
    static String decimal(float v) {
        return Float.isFinite(v) ? new BigDecimal(Float.toString(v)).toPlainString() : Float.toString(v);
    }
}
