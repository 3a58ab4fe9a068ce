package org.distill4j.core.loss;

import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Shapes;
import org.distill4j.core.Tensor;

/** Argument checks of the distillation loss, shared by the backends. */
public final class LossChecks {
    private LossChecks() {}

    public static void distillation(Backend b, Tensor student, Tensor teacher, Tensor labels, DistillationLoss cfg, long normalizer,
                                    Tensor loss, Tensor grad) {
        String op = "distillationLoss";
        Shapes.alive(op, student, teacher, labels, loss, grad);
        Shapes.backend(op, b, student, teacher, labels, loss, grad);
        Shapes.dtype(op, DType.F32, loss);
        if (student.dtype() != DType.F32 && student.dtype() != DType.BF16) {
            throw new IllegalArgumentException(op + ": student logits must be F32 or BF16, got " + student.describe());
        }
        Shapes.dtype(op + " (teacher and gradient as the student)", student.dtype(), teacher, grad);
        Shapes.rank(op, student, 2);
        Shapes.same(op + " (student vs teacher)", student, teacher);
        if (labels != null) {
            Shapes.dtype(op + " labels", DType.I64, labels);
            Shapes.expect(op + " labels", labels, student.size(0));
        } else if (cfg.alpha() != 1f) {
            throw new IllegalArgumentException(op + ": alpha is " + cfg.alpha() + " but there are no labels (without labels the loss is the soft term alone, alpha = 1)");
        }
        if (loss.numel() != 1 && loss.numel() != 3) {
            throw new IllegalArgumentException(op + ": loss must have 1 element (loss) or 3 (loss, soft, hard), got " + loss.describe());
        }
        if (grad != null) Shapes.same(op + " (student vs grad)", student, grad);
        if (normalizer < 0) throw new IllegalArgumentException(op + ": normalizer must be >= 0 (0 = rows counted in this call), got " + normalizer);
        if (student.size(1) < 1) throw new IllegalArgumentException(op + ": needs at least one class, got " + student.describe());
    }

    public static void topK(Backend b, Tensor indices, Tensor values, Tensor dense) {
        String op = "scatterTopK";
        Shapes.alive(op, indices, values, dense);
        Shapes.backend(op, b, indices, values, dense);
        Shapes.dtype(op, DType.I64, indices);
        Shapes.dtype(op, DType.F32, values, dense);
        Shapes.rank(op, indices, 2);
        Shapes.rank(op, dense, 2);
        Shapes.same(op + " (indices vs values)", indices, values);
        if (indices.size(0) != dense.size(0) || indices.size(1) > dense.size(1)) {
            throw new IllegalArgumentException(op + ": " + indices.describe() + " top-k entries do not fit " + dense.describe());
        }
    }

    public static void gatherRows(Backend b, Tensor table, Tensor indices, Tensor out) {
        String op = "gatherRows";
        Shapes.alive(op, table, indices, out);
        Shapes.backend(op, b, table, indices, out);
        if (table.dtype() != DType.F32 && table.dtype() != DType.BF16) {
            throw new IllegalArgumentException(op + ": the table must be F32 or BF16, got " + table.describe());
        }
        Shapes.dtype(op, DType.I64, indices);
        Shapes.dtype(op, DType.F32, out);
        Shapes.rank(op, table, 2);
        Shapes.rank(op, indices, 1);
        Shapes.rank(op, out, 2);
        if (indices.size(0) != out.size(0) || table.size(1) != out.size(1)) {
            throw new IllegalArgumentException(op + ": " + indices.describe() + " rows of " + table.describe() + " do not fit " + out.describe());
        }
    }

    public static void averageTeachers(Backend b, java.util.List<Tensor> teacherLogits, float temperature, Tensor out) {
        String op = "averageTeachers";
        if (teacherLogits.isEmpty()) throw new IllegalArgumentException(op + ": no teachers");
        if (!(temperature > 0)) throw new IllegalArgumentException(op + ": temperature must be > 0, got " + temperature);
        Shapes.alive(op, out);
        Shapes.backend(op, b, out);
        Shapes.dtype(op, DType.F32, out);
        for (Tensor t : teacherLogits) {
            Shapes.alive(op, t);
            Shapes.backend(op, b, t);
            Shapes.dtype(op, DType.F32, t);
            Shapes.same(op, t, out);
        }
    }
}
