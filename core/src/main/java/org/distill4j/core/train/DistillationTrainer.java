package org.distill4j.core.train;

import java.util.ArrayList;
import java.util.List;
import org.distill4j.core.Backend;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Model;

/**
 * The distillation side of the trainer, spelled out: frozen teachers (eval mode, forward only),
 * a student trained on the fused distillation loss, and the distillation options in one place.
 *
 * <pre>{@code
 * Trainer t = DistillationTrainer.of(backend, student, DistillationLoss.hinton(4f, 0.9f), config)
 *     .teacher(teacher)                       // repeat for several teachers (averaged at T)
 *     .hint(new FeatureHint(2, 4, 0.5f))      // optional feature distillation
 *     .build();
 * t.fit(train, test, metrics -> { }, checkpoints);
 * }</pre>
 *
 * It builds the same {@link Trainer} as {@link Trainer#distillation} plus {@link Trainer#withHint},
 * {@link Trainer#withTeacherCache}, {@link Trainer#graph} and {@link Trainer#skipNonFinite}; plain
 * supervised training (teachers, no-KD baselines) is {@link Trainer#supervised}.
 */
public final class DistillationTrainer {
    private final Backend backend;
    private final Model student;
    private final DistillationLoss loss;
    private final TrainingConfig config;
    private final List<Model> teachers = new ArrayList<>();
    private FeatureHint hint;
    private TeacherCache.Options cache;
    private Trainer.GraphMode graph = Trainer.GraphMode.AUTO;
    private boolean skipNonFinite;
    private org.distill4j.core.DType teacherDtype = org.distill4j.core.DType.F32;

    private DistillationTrainer(Backend backend, Model student, DistillationLoss loss, TrainingConfig config) {
        this.backend = backend;
        this.student = student;
        this.loss = loss;
        this.config = config;
    }

    public static DistillationTrainer of(Backend backend, Model student, DistillationLoss loss, TrainingConfig config) {
        return new DistillationTrainer(backend, student, loss, config);
    }

    /** A frozen teacher; several are averaged (their softened distributions at the loss's temperature). */
    public DistillationTrainer teacher(Model teacher) {
        teachers.add(teacher);
        return this;
    }

    public DistillationTrainer hint(FeatureHint hint) {
        this.hint = hint;
        return this;
    }

    public DistillationTrainer teacherCache(TeacherCache.Options cache) {
        this.cache = cache;
        return this;
    }

    /**
     * What the teachers' matrix products and convolutions run in: F32 (default) or BF16 (bf16
     * weights and inputs, float32 sums; CPU backend, no hint or cache): {@link Trainer#withTeacherDtype}.
     */
    public DistillationTrainer teacherDtype(org.distill4j.core.DType dtype) {
        this.teacherDtype = dtype;
        return this;
    }

    public DistillationTrainer graph(Trainer.GraphMode graph) {
        this.graph = graph;
        return this;
    }

    public DistillationTrainer skipNonFinite(boolean skip) {
        this.skipNonFinite = skip;
        return this;
    }

    /** Checks everything (class counts, input shapes, hint layers and shapes, the cache/hint combination) and returns the trainer. */
    public Trainer build() {
        Trainer t = Trainer.distillation(backend, student, teachers, loss, config);
        if (hint != null) t.withHint(hint);
        if (cache != null) t.withTeacherCache(cache);
        t.withTeacherDtype(teacherDtype);
        return t.graph(graph).skipNonFinite(skipNonFinite);
    }
}
