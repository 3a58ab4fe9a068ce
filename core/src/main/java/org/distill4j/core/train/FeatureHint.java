package org.distill4j.core.train;

/**
 * Feature (hint) distillation, FitNets-style: the output of top-level student layer
 * {@code studentLayer} goes through a learned adapter and is pulled towards the output of
 * top-level teacher layer {@code teacherLayer} by a mean squared error with weight {@code weight}:
 * loss += weight * sum((adapter(h_s) - h_t)^2) / (rows * features per row), rows being the rows of
 * the whole accumulation group (so accumulated micro-batches equal one big batch).
 *
 * <p>The adapter is chosen from the shapes: a linear layer [F_s -> F_t] for flat features
 * ([F] per sample), a 1x1 convolution [C_s -> C_t] for feature maps ([C, H, W] with the same H
 * and W on both sides). It is trained with the student and saved in checkpoints, not in the
 * student's weights.
 *
 * @param studentLayer 0-based index of a top-level layer of the student spec
 * @param teacherLayer 0-based index of a top-level layer of the (first) teacher spec
 * @param weight       weight of the hint term, > 0
 */
public record FeatureHint(int studentLayer, int teacherLayer, float weight) {
    public FeatureHint {
        if (studentLayer < 0 || teacherLayer < 0) {
            throw new IllegalArgumentException("hint layers are 0-based indices, got student " + studentLayer + ", teacher " + teacherLayer);
        }
        if (!(weight > 0) || !Float.isFinite(weight)) throw new IllegalArgumentException("hint weight must be a finite number > 0, got " + weight);
    }

    /** Parses "STUDENT_LAYER:TEACHER_LAYER[:WEIGHT]" (weight 1 by default), e.g. "3:5:0.5". */
    public static FeatureHint parse(String text) {
        String[] parts = text.split(":");
        if (parts.length < 2 || parts.length > 3) {
            throw new IllegalArgumentException("--hint must be STUDENT_LAYER:TEACHER_LAYER[:WEIGHT], e.g. 2:4:0.5, got '" + text + "'");
        }
        try {
            return new FeatureHint(Integer.parseInt(parts[0].trim()), Integer.parseInt(parts[1].trim()),
                parts.length == 3 ? Float.parseFloat(parts[2].trim()) : 1f);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--hint must be STUDENT_LAYER:TEACHER_LAYER[:WEIGHT] with whole layer indices, got '" + text + "'");
        }
    }
}
