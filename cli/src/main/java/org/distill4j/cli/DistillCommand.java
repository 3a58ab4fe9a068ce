package org.distill4j.cli;

import java.nio.file.Path;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.distill4j.core.train.DistillationTrainer;
import org.distill4j.core.train.FeatureHint;
import org.distill4j.core.train.TeacherCache;
import org.distill4j.core.train.Trainer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code distill distill}: train a student from a frozen teacher with the fused distillation loss. */
@Command(name = "distill", mixinStandardHelpOptions = true,
    description = "Train a student from a frozen teacher (eval mode, forward only) with alpha*T^2*D(p_t, p_s) + (1-alpha)*CE.",
    footer = {"", "Example:", "  distill distill --teacher teacher.json --teacher-weights runs/teacher/model.safetensors --student student.json \\",
        "      --temperature 4 --alpha 0.9 --data idx:TRAIN_IMAGES,TRAIN_LABELS --test-data idx:TEST_IMAGES,TEST_LABELS --out runs/student-kd"})
final class DistillCommand implements Callable<Integer> {
    @Option(names = "--teacher", required = true, paramLabel = "SPEC.json|DIR",
        description = "a model spec (repeat for several teachers: their softened distributions are averaged), or one Hugging Face decoder folder")
    java.util.List<Path> teachers;
    @Option(names = "--teacher-weights", paramLabel = "W.safetensors", description = "one per --teacher spec, in the same order (a decoder folder has its own)")
    java.util.List<Path> teacherWeights = new java.util.ArrayList<>();
    @Option(names = "--student", paramLabel = "SPEC.json|DIR", description = "a model spec, or a decoder folder (its weights, or config.json alone for a new model)")
    Path student;
    @Option(names = "--student-init", paramLabel = "teacher-layers:I,J,...",
        description = "decoders: build the student from these teacher layers, with the teacher's embeddings, final norm and lm_head (DistilBERT / Minitron)")
    String studentInit;
    @Option(names = "--hint-loss", defaultValue = "mse", paramLabel = "mse|cosine", description = "decoders: how --hint compares hidden states (default: ${DEFAULT-VALUE})")
    String hintLoss;
    @Option(names = "--on-policy-fraction", paramLabel = "L", description = "decoders (GKD): the fraction of batches whose continuations the student samples")
    Float onPolicyFraction;
    @Option(names = "--prompt-len", paramLabel = "P", description = "decoders (GKD): the window's first P tokens prompt the student (default: --seq-len / 2)")
    Integer promptLen;
    @Option(names = "--sample-temperature", paramLabel = "S", description = "decoders (GKD): the student's sampling temperature, 0: greedy (default: 1)")
    Float sampleTemperature;
    @Option(names = "--divergence", defaultValue = "kl", paramLabel = "kl|reverse-kl|jsd|mse", description = "default: ${DEFAULT-VALUE}") String divergence;
    @Option(names = "--temperature", defaultValue = "4", description = "default: ${DEFAULT-VALUE}") float temperature;
    @Option(names = "--alpha", defaultValue = "0.9", description = "weight of the soft term (default: ${DEFAULT-VALUE})") float alpha;
    @Option(names = "--beta", defaultValue = "0.5", description = "JSD mixture weight (default: ${DEFAULT-VALUE})") float beta;
    @Option(names = "--hint", paramLabel = "S:T[:W]",
        description = "feature distillation: MSE between student layer S (through a learned linear or 1x1-conv adapter) and teacher layer T "
            + "(0-based top-level layer indices), weight W (default 1); decoders: hidden states S and T as transformers numbers them "
            + "(0 the embeddings, i the output of layer i-1, the layer count the final norm's output), --hint-loss mse|cosine, "
            + "a learned projection when the widths differ") String hint;
    @Option(names = "--teacher-dtype", defaultValue = "stored", paramLabel = "stored|f32|bf16",
        description = "the dtype the frozen teacher runs in. Decoders, stored: bf16 when its weights are bf16 on disk and bf16 matrix products run "
            + "natively here (oneDNN on the CPU, CUDA), else f32; model specs, stored: f32 (their weights are float32). bf16: weights rounded to bf16 "
            + "and every matrix product's (model specs: and convolution's) input rounded to bf16, float32 sums (model specs: CPU only, without "
            + "--hint); f32: float32 throughout (default: ${DEFAULT-VALUE})") String teacherDtype;
    @Option(names = "--teacher-cache", paramLabel = "device|file:PATH",
        description = "compute the teachers' logits once and look them up each step (for data without augmentation); a matching file is reused") String teacherCache;
    @Option(names = "--teacher-cache-dtype", defaultValue = "f32", paramLabel = "f32|bf16", description = "default: ${DEFAULT-VALUE}") String teacherCacheDtype;
    @Option(names = "--teacher-cache-topk", paramLabel = "K",
        description = "keep each sample's (decoders: each token's) K largest teacher logits and their classes (K/C of the cache; the classes not kept carry "
            + "no teacher mass: --divergence kl, or jsd with beta < 1); 0: every class. Default: 0 for model specs; for decoders "
            + "64 above 4096 classes, else every class") Integer teacherCacheTopK;
    @CommandLine.Mixin TrainingOptions options;
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (teachers.stream().anyMatch(java.nio.file.Files::isDirectory)) {
            if (teachers.size() > 1) throw new IllegalArgumentException("decoder distillation takes one --teacher folder (several teachers are for model specs)");
            return distillDecoders();
        }
        if (student == null) throw new IllegalArgumentException("--student SPEC.json is required");
        if (studentInit != null || onPolicyFraction != null || promptLen != null || sampleTemperature != null || !"mse".equals(hintLoss)) {
            throw new IllegalArgumentException("--student-init, --hint-loss, --on-policy-fraction, --prompt-len and --sample-temperature "
                + "are for decoder folders");
        }
        // A model spec's weights are float32 (Model.load takes the spec's F32 tensors only), so stored is f32.
        org.distill4j.core.DType specTeacherDtype = DecoderDtype.parse("--teacher-dtype", teacherDtype) == DecoderDtype.BF16
            ? org.distill4j.core.DType.BF16 : org.distill4j.core.DType.F32;
        var cfg = options.config();
        DistillationLoss kd = new DistillationLoss(Divergence.parse(divergence), temperature, alpha, beta, -100);
        FeatureHint featureHint = hint == null ? null : FeatureHint.parse(hint);
        int topK = teacherCacheTopK == null ? 0 : teacherCacheTopK;
        TeacherCache.Options cache = teacherCache == null ? null : TeacherCache.Options.parse(teacherCache, teacherCacheDtype, topK);
        if (cache == null && topK != 0) throw new IllegalArgumentException("--teacher-cache-topk needs --teacher-cache device|file:PATH");
        if (teachers.size() != teacherWeights.size()) {
            throw new IllegalArgumentException(teachers.size() + " --teacher but " + teacherWeights.size() + " --teacher-weights: give one weights file per teacher");
        }
        java.util.List<ModelSpec> specs = new java.util.ArrayList<>();
        for (Path t : teachers) specs.add(ModelSpec.read(t));
        ModelSpec ss = ModelSpec.read(student);
        java.util.List<Model> built = new java.util.ArrayList<>();
        try (Dataset train = options.train(); Dataset test = options.test(); Backend b = options.backend(); Model s = ss.build(b, cfg.seed())) {
            try {
                for (ModelSpec t : specs) built.add(t.build(b, 0));
                DistillationTrainer setup = DistillationTrainer.of(b, s, kd, cfg).hint(featureHint).teacherCache(cache).teacherDtype(specTeacherDtype);
                built.forEach(setup::teacher);
                Trainer trainer = setup.build(); // checks every teacher fits the student before anything loads
                for (int i = 0; i < built.size(); i++) built.get(i).load(teacherWeights.get(i));
                options.run(trainer, s, train, test, spec.commandLine().getOut());
            } finally {
                built.forEach(Model::close);
            }
        }
        return 0;
    }

    /** Decoder folders: one teacher, token-level distillation (DecoderTraining). */
    private int distillDecoders() throws java.io.IOException {
        if (!teacherWeights.isEmpty()) throw new IllegalArgumentException("--teacher-weights is for model specs; the teacher folder " + teachers.getFirst() + " has its weights");
        if (student != null && !java.nio.file.Files.isDirectory(student)) {
            throw new IllegalArgumentException("--student " + student + ": a decoder teacher needs a decoder student folder (config.json, and weights or not)");
        }
        if (teacherCache == null && teacherCacheTopK != null) throw new IllegalArgumentException("--teacher-cache-topk needs --teacher-cache device|file:PATH");
        if (teacherCache != null && hint != null) {
            throw new IllegalArgumentException("--hint needs the teacher's hidden states every step and --teacher-cache keeps only its logits: use one or the other");
        }
        // Parsed now (the bad option fails before any model loads); topK 0 here, the decoder's k is chosen once the shared vocabulary is known.
        TeacherCache.Options cache = teacherCache == null ? null : TeacherCache.Options.parse(teacherCache, teacherCacheDtype, 0);
        if (teacherCacheTopK != null && teacherCacheTopK < 0) throw new IllegalArgumentException("--teacher-cache-topk must be >= 0 (0: every class), got " + teacherCacheTopK);
        if (onPolicyFraction == null && (promptLen != null || sampleTemperature != null)) {
            throw new IllegalArgumentException("--prompt-len and --sample-temperature go with --on-policy-fraction L");
        }
        DistillationLoss kd = new DistillationLoss(Divergence.parse(divergence), temperature, alpha, beta, -100);
        org.distill4j.core.lm.DecoderHint.Spec h = hint == null ? null
            : org.distill4j.core.lm.DecoderHint.Spec.parse(hint, org.distill4j.core.lm.DecoderHint.Kind.parse(hintLoss));
        DecoderTraining.OnPolicy onPolicy = onPolicyFraction == null ? null
            : new DecoderTraining.OnPolicy(onPolicyFraction, promptLen, sampleTemperature == null ? 1f : sampleTemperature);
        DecoderTraining.distill(options, new DecoderTraining.Distill(teachers.getFirst(), student, studentInit, kd, h, onPolicy, cache, teacherCacheTopK,
            DecoderDtype.parse("--teacher-dtype", teacherDtype)),
            spec.commandLine().getOut());
        return 0;
    }
}
