package org.distill4j.core.lm;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import org.distill4j.core.Backend;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.lm.DecoderFamily.LayerNames;
import org.distill4j.core.lm.DecoderFamily.Layout;
import org.distill4j.core.lm.DecoderFamily.Projection;
import org.distill4j.core.lm.DecoderDeviceOps.Attention;
import org.distill4j.core.lm.DecoderProfile.Op;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;

/**
 * A decoder-only transformer (GPT-2, Llama, Mistral, Qwen2, Qwen3) read from and written to a
 * Hugging Face folder. Forward with an attention mask, position ids and an optional
 * {@link KvCache}; in training mode the forward keeps its activations and {@link #backward}
 * accumulates every parameter's gradient (a tied embedding receives both its uses). The ops are
 * explicit forward/backward pairs of the backend's {@link DecoderDeviceOps}: {@link DecoderOps} on
 * host memory for the CPU backend (the oracle), {@link CudaDecoderOps} on a CUDA backend (weights
 * loaded, initialised and saved through host memory; see docs/language-models.md, CUDA).
 *
 * <p>Conventions (N = B * T token rows, D hidden, A = heads * headDim, QKV = (heads + 2 kvHeads) *
 * headDim): token ids I64 [B, T]; attention mask [B, T] with 0 on padding; logits F32 [B, T, V].
 * Position ids default to past + arange(T) for every row, as transformers' forward does (it does
 * not look at the mask); {@link #positionsFromMask} gives generate()'s cumsum positions.
 *
 * <p>Activations live in the pass's arena, which must be shared ({@code Arena.ofShared()}): the
 * CPU backend's elementwise ops (residual adds, dropout) run across the common fork-join pool.
 * One model serves one forward/backward at a time (the training forward's state is kept here).
 */
public final class DecoderModel implements AutoCloseable {
    private final Backend backend;
    private final DecoderDeviceOps ops; // the backend's decoder ops: CpuDecoderOps (DecoderOps on host memory) or CudaDecoderOps
    private final DecoderConfig config;
    private final Layout layout;
    private final Map<String, Parameter> parameters = new LinkedHashMap<>();
    private final Map<String, String> storedKeys = new LinkedHashMap<>();
    private final String diskDtype;
    /** F32, or BF16 for a frozen model run in bfloat16: its embedding, projection and lm_head weights held as bf16 (no gradients). */
    private final DType weightDtype;
    private DType writeDtype = DType.F32; // what save(dir) writes: the parameters' one dtype on disk (F32 for a new model or mixed dtypes)
    private final float[] invFreq;
    private final Block[] blocks;
    private final Parameter embedding, positions, finalNormWeight, finalNormBias, lmHead;
    private Saved saved; // the last training-mode forward, for backward
    private boolean dropoutEnabled = true;

    /** A projection's spec with its parameters. */
    private record Proj(Projection spec, Parameter weight, Parameter bias) {}

    private record Block(Parameter attnNormWeight, Parameter attnNormBias, List<Proj> qkv, Proj attnOut, Parameter qNorm, Parameter kNorm,
                         Parameter mlpNormWeight, Parameter mlpNormBias, List<Proj> mlpIn, Proj mlpOut) {}

    private DecoderModel(Backend backend, DecoderConfig config, String diskDtype) {
        this(backend, config, diskDtype, DType.F32);
    }

    private DecoderModel(Backend backend, DecoderConfig config, String diskDtype, DType weightDtype) {
        this.backend = backend;
        this.ops = DecoderDeviceOps.forBackend(backend); // refuses a backend other than the CPU's and CUDA's
        this.config = config;
        this.diskDtype = diskDtype;
        if (weightDtype != DType.F32 && weightDtype != DType.BF16) throw new IllegalArgumentException("decoder weights are F32 or BF16, not " + weightDtype);
        this.weightDtype = weightDtype;
        this.layout = config.family().layout(config);
        java.util.Set<String> matmulWeights = new java.util.HashSet<>();
        matmulWeights.add(layout.embedding());
        if (layout.lmHead() != null) matmulWeights.add(layout.lmHead());
        for (LayerNames n : layout.layers()) {
            for (List<Projection> group : List.of(n.qkv(), List.of(n.attnOut()), n.mlpIn(), List.of(n.mlpOut()))) {
                for (Projection pr : group) matmulWeights.add(pr.weight());
            }
        }
        boolean frozen = weightDtype == DType.BF16;
        try {
            for (DecoderFamily.TensorSpec t : config.family().tensors(config)) {
                DType dtype = frozen && matmulWeights.contains(t.name()) ? DType.BF16 : DType.F32;
                parameters.put(t.name(), new Parameter(t.name(), backend.zeros(dtype, t.shape()), !frozen));
            }
        } catch (RuntimeException | OutOfMemoryError e) {
            close();
            throw e;
        }
        embedding = parameters.get(layout.embedding());
        positions = layout.positions() == null ? null : parameters.get(layout.positions());
        finalNormWeight = parameters.get(layout.finalNormWeight());
        finalNormBias = layout.finalNormBias() == null ? null : parameters.get(layout.finalNormBias());
        lmHead = layout.lmHead() == null ? embedding : parameters.get(layout.lmHead());
        blocks = new Block[config.layers()];
        for (int l = 0; l < blocks.length; l++) {
            LayerNames n = layout.layers().get(l);
            blocks[l] = new Block(p(n.attnNormWeight()), p(n.attnNormBias()), n.qkv().stream().map(this::proj).toList(), proj(n.attnOut()),
                p(n.qNorm()), p(n.kNorm()), p(n.mlpNormWeight()), p(n.mlpNormBias()), n.mlpIn().stream().map(this::proj).toList(), proj(n.mlpOut()));
        }
        invFreq = config.rope() == null ? null : config.rope().inverseFrequencies(config.headDim());
    }

    private Parameter p(String name) {
        return name == null ? null : parameters.get(name);
    }

    private Proj proj(Projection spec) {
        return new Proj(spec, p(spec.weight()), p(spec.bias()));
    }

    /**
     * Loads a Hugging Face folder (config.json and model.safetensors or shards). Unknown tensors are
     * refused; the family's non-parameter buffers and a tied lm_head.weight are ignored, as
     * transformers ignores them.
     */
    public static DecoderModel load(Backend backend, Path dir) throws IOException {
        return load(backend, dir, DType.F32);
    }

    /**
     * As {@link #load(Backend, Path)}, with the weights of every matrix product (the embedding,
     * every projection and the lm_head) held as {@code weights}: F32 (trainable), or BF16 for a
     * frozen model run in bfloat16, as a bf16 checkpoint runs in transformers: those weights as
     * stored (F32 or F16 ones rounded to nearest even), each product's input rounded to bf16 and
     * summed in float32 ({@link CpuBlas#gemmBf16} on the CPU; cublasGemmEx with float32
     * accumulation on CUDA, the token table gathered by d4j_embedding_forward_bf16); norms, biases,
     * positions, the residual stream, attention and the logits stay float32. On CUDA the weights
     * are staged through host memory as float32 ones are. A BF16 model has no gradients and is not saved.
     */
    public static DecoderModel load(Backend backend, Path dir, DType weights) throws IOException {
        DecoderConfig config = DecoderConfig.read(dir);
        try (HfCheckpoint ckpt = HfCheckpoint.open(dir)) {
            DecoderModel m = new DecoderModel(backend, config, ckpt.dtypes(config.family()), weights);
            try {
                m.loadFrom(ckpt, dir);
                return m;
            } catch (RuntimeException e) {
                m.close();
                throw e;
            }
        }
    }

    /**
     * A new model of the config in {@code dir}/config.json (no weights read), initialised as
     * transformers' from_config does: weights and embeddings N(0, initializer_range) (default
     * 0.02), biases 0, norm weights 1; GPT-2's c_proj weights N(0, initializer_range / sqrt(2 n_layer)).
     * Draws come from Philox(seed), so the same seed gives the same model.
     */
    public static DecoderModel fromConfig(Backend backend, Path dir, long seed) throws IOException {
        return fromConfig(backend, DecoderConfig.read(dir), seed);
    }

    /** A new model of {@code config}, initialised as {@link #fromConfig(Backend, Path, long)} describes. */
    public static DecoderModel fromConfig(Backend backend, DecoderConfig config, long seed) {
        double std = config.json().hasNonNull("initializer_range") ? config.json().get("initializer_range").asDouble() : 0.02;
        DecoderModel m = new DecoderModel(backend, config, "none (new model)");
        Map<String, Boolean> norms = new LinkedHashMap<>();
        for (Block blk : m.blocks) {
            for (Parameter p : new Parameter[] {blk.attnNormWeight(), blk.mlpNormWeight(), blk.qNorm(), blk.kNorm()}) if (p != null) norms.put(p.name(), true);
        }
        norms.put(m.finalNormWeight.name(), true);
        long stream = 0;
        for (Parameter p : m.parameters.values()) {
            stream++;
            if (norms.containsKey(p.name())) {
                backend.fill(p.value(), 1f);
            } else if (p.value().rank() == 1) {
                backend.zero(p.value()); // biases (and LayerNorm biases)
            } else {
                boolean residualProjection = config.family() == DecoderFamily.GPT2 && p.name().endsWith(".c_proj.weight");
                normal(p.value(), residualProjection ? std / Math.sqrt(2.0 * config.layers()) : std, seed, stream);
            }
        }
        return m;
    }

    /**
     * A depth-pruned copy of {@code teacher} (the DistilBERT / Minitron initialisation): layer i
     * is a copy of the teacher's layer {@code layers[i]}, and the embeddings, positions, final norm
     * and lm_head are copied too. The config is the teacher's with {@link DecoderConfig#withLayers}.
     */
    public static DecoderModel fromTeacherLayers(DecoderModel teacher, int[] layers) {
        for (int l : layers) {
            if (l < 0 || l >= teacher.config.layers()) {
                throw new IllegalArgumentException("--student-init teacher-layers: layer " + l + " is outside [0, " + teacher.config.layers() + ") of "
                    + teacher.config.file());
            }
        }
        DecoderModel m = new DecoderModel(teacher.backend, teacher.config.withLayers(layers), "none (copied teacher layers)");
        try {
            java.util.regex.Pattern layer = java.util.regex.Pattern.compile("\\.(h|layers)\\.(\\d+)\\.");
            for (Parameter p : m.parameters.values()) {
                java.util.regex.Matcher mt = layer.matcher(p.name());
                String source = mt.find() ? p.name().substring(0, mt.start()) + "." + mt.group(1) + "." + layers[Integer.parseInt(mt.group(2))] + "."
                    + p.name().substring(mt.end()) : p.name();
                Parameter from = teacher.parameters.get(source);
                if (from == null || !Arrays.equals(from.value().shape(), p.value().shape())) {
                    throw new IllegalStateException("--student-init: no teacher tensor " + source + " of shape " + Arrays.toString(p.value().shape()));
                }
                if (from.value().dtype() == DType.BF16) {
                    widen(from.value(), p.value()); // a bf16 teacher's weights, widened exactly
                } else {
                    m.backend.copy(from.value(), p.value());
                }
            }
            return m;
        } catch (RuntimeException e) {
            m.close();
            throw e;
        }
    }

    /**
     * dst F32 = src BF16 (same shape, same backend) widened exactly: on the tensors' memory on the
     * CPU, else through host staging buffers (a device copy each way), as the loads stage.
     */
    private static void widen(Tensor src, Tensor dst) {
        Backend backend = dst.backend();
        boolean host = backend.isHost();
        // Shared, as the tensors' arenas: a confined segment here would give DecoderOps.set a second profile.
        try (Arena staging = Arena.ofShared()) {
            MemorySegment in = host ? src.data() : staging.allocate(Math.max(2, src.byteSize()), 16).asSlice(0, src.byteSize());
            MemorySegment out = host ? dst.data() : staging.allocate(Math.max(4, dst.byteSize()), 16).asSlice(0, dst.byteSize());
            if (!host) backend.copyToHost(src, in);
            for (long i = 0; i < dst.numel(); i++) DecoderOps.set(out, i, Bf16.toFloat(in.getAtIndex(ValueLayout.JAVA_SHORT, i)));
            if (!host) backend.copyFromHost(out, dst);
        }
    }

    /**
     * x = N(0, std) by Box-Muller over Philox(seed) uniforms, stream {@code stream} of the seed (one per
     * parameter). Drawn on the host: into x itself on the CPU, else into a host buffer the backend
     * then copies to the device (the same values on every backend).
     */
    static void normal(Tensor x, double std, long seed, long stream) {
        Backend backend = x.backend();
        // Shared, as the tensors' arenas: a confined segment here would give DecoderOps.set a second profile.
        try (Arena staging = Arena.ofShared()) {
            MemorySegment out = backend.isHost() ? x.data() : staging.allocate(Math.max(1, x.byteSize()), 16);
            long offset = stream << 40;
            for (long i = 0; i < x.numel(); i++) {
                double u1 = org.distill4j.core.Philox.uniform(seed, offset + 2 * i), u2 = org.distill4j.core.Philox.uniform(seed, offset + 2 * i + 1);
                double z = Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2); // 1 - u1 is in (0, 1]: no log(0)
                DecoderOps.set(out, i, (float) (std * z));
            }
            if (!backend.isHost()) backend.copyFromHost(out.asSlice(0, x.byteSize()), x);
        }
    }

    private void loadFrom(HfCheckpoint ckpt, Path dir) {
        TreeSet<String> unused = new TreeSet<>(ckpt.keys().keySet());
        for (Parameter p : parameters.values()) {
            String key = ckpt.storedKey(p.name(), layout.optionalPrefix());
            if (key == null) {
                throw new IllegalArgumentException(dir + ": tensor '" + p.name() + "' " + Arrays.toString(p.value().shape()) + " is missing (stored "
                    + ckpt.keys().size() + " tensors; " + config.family().modelType() + " with " + config.layers() + " layers needs it)");
            }
            ckpt.copyInto(key, p.value());
            storedKeys.put(p.name(), key);
            unused.remove(key);
        }
        TreeSet<String> stored = new TreeSet<>();
        for (String key : storedKeys.values()) stored.add(ckpt.keys().get(key).entries().get(key).dtype());
        writeDtype = stored.size() == 1 ? DType.valueOf(stored.first()) : DType.F32; // copyInto admitted only F32, BF16 and F16
        unused.removeIf(k -> config.family().isBuffer(k) || (config.tied() && ckpt.storedKey("lm_head.weight", null) != null && k.equals("lm_head.weight")));
        if (!unused.isEmpty()) {
            String k = unused.first();
            throw new IllegalArgumentException(ckpt.keys().get(k).file() + ": unexpected tensor '" + k + "' (" + unused.size()
                + " in all): not a parameter of " + config.family().modelType() + " as " + config.file() + " describes it");
        }
    }

    /**
     * What {@code distill info --model DIR} prints, from config.json and the weight files' headers
     * (nothing is loaded): family, parameters, layers, heads, KV heads, vocabulary, context length,
     * dtype on disk.
     */
    public record Summary(String family, long parameters, int layers, int heads, int kvHeads, long headDim, long hidden, long vocab, long context,
                          String diskDtype, boolean tied) {
        public List<String> lines() {
            return List.of("family: " + family + (tied ? " (tied lm_head)" : ""), String.format(java.util.Locale.ROOT, "parameters: %,d", parameters),
                "layers: " + layers, "heads: " + heads + " (head_dim " + headDim + ", hidden " + hidden + ")", "KV heads: " + kvHeads,
                "vocabulary: " + vocab, "context length: " + context, "dtype on disk: " + diskDtype);
        }
    }

    public static Summary summary(Path dir) throws IOException {
        DecoderConfig c = DecoderConfig.read(dir);
        try (HfCheckpoint ckpt = HfCheckpoint.open(dir)) {
            return new Summary(c.family().modelType(), c.parameterCount(), c.layers(), c.heads(), c.kvHeads(), c.headDim(), c.hidden(), c.vocab(),
                c.maxPositions(), ckpt.dtypes(c.family()), c.tied());
        }
    }

    /**
     * Writes the model as a Hugging Face folder that transformers' from_pretrained loads strictly
     * (see HfCheckpoint#save), in the dtype its parameters had on disk ({@link #writeDtype}), as
     * save_pretrained writes a model in its dtype: a BF16 checkpoint loaded and saved is BF16 again,
     * bit for bit when the weights did not change.
     */
    public void save(Path dir) throws IOException {
        save(dir, writeDtype);
    }

    /** As {@link #save(Path)}, stored as {@code dtype}: F32, or BF16 / F16 rounded to nearest even. */
    public void save(Path dir, DType dtype) throws IOException {
        if (weightDtype != DType.F32) {
            throw new IllegalStateException("a decoder loaded with " + weightDtype + " weights for inference is not saved; load " + config.file().getParent()
                + " in float32 to write it");
        }
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Parameter p : parameters.values()) tensors.put(p.name(), p.value());
        HfCheckpoint.save(dir, config, tensors, dtype);
    }

    /** The dtype {@link #save(Path)} writes: the one dtype of the parameters on disk; F32 for a new model or a checkpoint of mixed dtypes. */
    public DType writeDtype() { return writeDtype; }

    /** F32, or BF16 for a frozen model whose matrix products run in bfloat16 (see {@link #load(Backend, Path, DType)}). */
    public DType weightDtype() { return weightDtype; }

    public DecoderConfig config() { return config; }

    public Backend backend() { return backend; }

    /** Trainable parameters with their HF names, in module order; a tied weight appears once (under the embedding's name). */
    public List<Parameter> parameters() { return List.copyOf(parameters.values()); }

    public Parameter parameter(String hfName) {
        Parameter p = parameters.get(hfName);
        if (p == null) throw new IllegalArgumentException("no parameter '" + hfName + "' in this " + config.family().modelType() + " model");
        return p;
    }

    /** For each parameter, the key it was read from (GPT-2 hub files: without "transformer."). */
    public Map<String, String> storedKeys() { return Collections.unmodifiableMap(storedKeys); }

    /** The dtypes of the weights on disk ("BF16", "F32", ...). */
    public String diskDtype() { return diskDtype; }

    public long parameterCount() {
        return parameters.values().stream().mapToLong(p -> p.value().numel()).sum();
    }

    /**
     * Whether training-mode forwards apply the config's dropout (default true). Off, a training
     * forward and backward give the gradient PyTorch's autograd gives in eval mode.
     */
    public void setDropout(boolean enabled) {
        dropoutEnabled = enabled;
    }

    /** Sets every gradient to zero. */
    public void zeroGrad() {
        requireTrainable();
        for (Parameter p : parameters.values()) backend.zero(p.grad());
    }

    private void requireTrainable() {
        if (weightDtype != DType.F32) {
            throw new IllegalStateException("this decoder holds " + weightDtype + " weights for inference (a frozen teacher): it has no gradients; load "
                + config.file().getParent() + " in float32 to train it");
        }
    }

    /** generate()'s position ids for a mask [B, T]: cumsum(mask) - 1, with 1 at padding. */
    public static long[] positionsFromMask(long[] mask, int batch, long t) {
        long[] out = new long[mask.length];
        for (int b = 0; b < batch; b++) {
            long c = 0;
            for (long i = 0; i < t; i++) {
                int at = (int) (b * t + i);
                c += mask[at] != 0 ? 1 : 0;
                out[at] = mask[at] != 0 ? c - 1 : 1;
            }
        }
        return out;
    }

    // ---- forward

    /** Keys and values of every layer for incremental decoding: [B, capacity, kvHeads * headDim] each, and the mask of the keys so far. */
    public final class KvCache implements AutoCloseable {
        private final Arena arena = Arena.ofShared(); // shared: the cache outlives the call that made it and may be read from any thread
        private final int batch;
        private final long capacity;
        private final Tensor[] keys, values;
        private final long[] keyMask;
        private long length;

        private KvCache(int batch, long capacity) {
            this.batch = batch;
            this.capacity = capacity;
            long kv = config.kvHeads() * config.headDim();
            keys = new Tensor[config.layers()];
            values = new Tensor[config.layers()];
            for (int l = 0; l < keys.length; l++) {
                keys[l] = backend.empty(arena, DType.F32, batch, capacity, kv);
                values[l] = backend.empty(arena, DType.F32, batch, capacity, kv);
            }
            keyMask = new long[Math.toIntExact(batch * capacity)];
        }

        /** Tokens held so far. */
        public long length() { return length; }

        @Override
        public void close() {
            arena.close();
        }
    }

    /** A cache for {@code batch} sequences of up to {@code capacity} tokens (eval-mode forwards only). */
    public KvCache newCache(int batch, long capacity) {
        return new KvCache(batch, capacity);
    }

    /** Logits for input ids I64 [B, T] with an optional mask I64 [B, T] (no cache, default positions). */
    public Tensor forward(Layer.Pass pass, Tensor inputIds, Tensor attentionMask) {
        if (inputIds.dtype() != DType.I64 || inputIds.rank() != 2) throw new IllegalArgumentException("input ids must be I64 [B, T], got " + inputIds.describe());
        if (attentionMask != null && !Arrays.equals(attentionMask.shape(), inputIds.shape())) {
            throw new IllegalArgumentException("attention mask " + attentionMask.describe() + " does not match input ids " + inputIds.describe());
        }
        return forward(pass, inputIds.toLongArray(), Math.toIntExact(inputIds.size(0)), inputIds.size(1),
            attentionMask == null ? null : attentionMask.toLongArray(), null, null);
    }

    /** What a training-mode forward keeps for the backward (all in the pass's arena). */
    private static final class Saved {
        int batch;
        long t;
        long[] ids, positions, keyMask;
        Tensor x0, cos, sin, lnf, lnfMean, lnfRstd;
        Tensor[] resIn, ln1, ln1Mean, ln1Rstd, qkvRaw, qkv, qRstd, kRstd, probs, probsUsed, attn, ln2, ln2Mean, ln2Rstd, mlpIn, mlpAct, resMid;
        Tensor lastRes;
        Layer.Pass pass;
        boolean dropout; // whether this forward applied dropout (training with dropout enabled): the backward must match it
        boolean train; // training forwards keep every layer's activations; eval forwards reuse layer 0's buffers
    }

    /**
     * Logits F32 [B, T, V] for ids [B * T] (row-major [B, T]).
     *
     * @param attentionMask [B, T] (0 = padding), or null; with a cache: the mask of these T new tokens
     * @param positionIds   [B, T], or null for past + arange(T)
     * @param cache         a cache to read the past from and append to (eval mode only), or null
     */
    public Tensor forward(Layer.Pass pass, long[] ids, int batch, long t, long[] attentionMask, long[] positionIds, KvCache cache) {
        Tensor hidden = forwardHidden(pass, ids, batch, t, attentionMask, positionIds, cache, null);
        long n = batch * t;
        Tensor logits = backend.empty(pass.arena(), DType.F32, batch, t, config.vocab());
        long pt = DecoderProfile.start();
        ops.projectionForward(logits, 0, config.vocab(), hidden, config.hidden(), lmHead.value(), null, n, config.hidden(), config.vocab(), false);
        DecoderProfile.stop(Op.LM_HEAD_F, pt);
        return logits;
    }

    /**
     * A copy of hidden state {@code index} of a forward, as transformers numbers output_hidden_states:
     * 0 is the embeddings' output (after embedding dropout), i in [1, layers) the output of layer
     * i - 1, and {@code layers} the final norm's output. {@code out} is F32 [B * T, D].
     */
    public record HiddenTap(int index, Tensor out) {}

    /** Checks a hidden-state index (0 = embeddings, layers = the final norm's output) against this model. */
    public void checkHiddenIndex(int index, String what) {
        if (index < 0 || index > config.layers()) {
            throw new IllegalArgumentException(what + ": hidden state " + index + " is outside [0, " + config.layers() + "] of " + config.file()
                + " (0: the embeddings, i: the output of layer i - 1, " + config.layers() + ": the final norm's output)");
        }
    }

    /**
     * The forward up to the final norm: hidden states F32 [B * T, D] (in the pass's arena) that the
     * lm_head turns into logits. A training-mode call keeps what {@link #backwardHidden} needs; with
     * {@code tap} not null, hidden state {@code tap.index()} is also copied into {@code tap.out()}.
     * Arguments as {@link #forward(Layer.Pass, long[], int, long, long[], long[], KvCache)}.
     */
    public Tensor forwardHidden(Layer.Pass pass, long[] ids, int batch, long t, long[] attentionMask, long[] positionIds, KvCache cache, HiddenTap tap) {
        if (pass.backend() != backend) throw new IllegalArgumentException("the pass's backend " + pass.backend().name() + " is not the model's " + backend.name());
        if (pass.train() && cache != null) throw new IllegalArgumentException("a KV cache is for eval-mode decoding, not training");
        long n = batch * t;
        if (ids.length != n) throw new IllegalArgumentException(ids.length + " token ids for [" + batch + ", " + t + "]");
        if (attentionMask != null && attentionMask.length != n) throw new IllegalArgumentException(attentionMask.length + " mask entries for [" + batch + ", " + t + "]");
        if (positionIds != null && positionIds.length != n) throw new IllegalArgumentException(positionIds.length + " position ids for [" + batch + ", " + t + "]");
        long past = cache == null ? 0 : cache.length;
        if (cache != null && (cache.batch != batch || past + t > cache.capacity)) {
            throw new IllegalArgumentException("the cache holds " + cache.batch + " sequences of up to " + cache.capacity + " tokens; cannot add [" + batch + ", " + t
                + "] after " + past);
        }
        config.checkSequenceLength(past + t);
        if (tap != null) {
            checkHiddenIndex(tap.index(), "hidden-state tap");
            if (tap.out().dtype() != DType.F32 || tap.out().numel() != n * config.hidden()) {
                throw new IllegalArgumentException("hidden-state tap: " + tap.out().describe() + ", expected F32 [" + n + ", " + config.hidden() + "]");
            }
        }
        for (int r = 0; r < n; r++) {
            if (ids[r] < 0 || ids[r] >= config.vocab()) {
                throw new IllegalArgumentException("token id " + ids[r] + " at [" + r / t + ", " + r % t + "] is outside the vocabulary [0, " + config.vocab() + ") of "
                    + config.file());
            }
        }
        long[] pos = positionIds != null ? positionIds.clone() : new long[(int) n];
        if (positionIds == null) for (int r = 0; r < n; r++) pos[r] = past + r % t;
        for (int r = 0; r < n; r++) {
            if (pos[r] < 0 || (positions != null && pos[r] >= config.maxPositions())) {
                throw new IllegalArgumentException("position id " + pos[r] + " at [" + r / t + ", " + r % t + "] is outside [0, " + config.maxPositions()
                    + ") ('n_positions' of " + config.file() + ")");
            }
        }
        long[] keyMask = null;
        long tk = past + t;
        if (cache != null) {
            for (int b = 0; b < batch; b++) {
                for (long i = 0; i < t; i++) cache.keyMask[(int) (b * cache.capacity + past + i)] = attentionMask == null ? 1 : attentionMask[(int) (b * t + i)];
            }
            keyMask = new long[(int) (batch * tk)];
            for (int b = 0; b < batch; b++) System.arraycopy(cache.keyMask, (int) (b * cache.capacity), keyMask, (int) (b * tk), (int) tk);
        } else if (attentionMask != null) {
            keyMask = attentionMask.clone();
        }

        long d = config.hidden(), hd = config.headDim(), a = config.heads() * hd, kvw = config.kvHeads() * hd, qkvW = a + 2 * kvw;
        long inner = config.intermediate(), mlpInW = config.mlp() == DecoderConfig.Mlp.SWIGLU ? 2 * inner : inner;
        int layers = config.layers();
        boolean train = pass.train();
        Saved s = new Saved();
        s.batch = batch;
        s.t = t;
        s.ids = ids.clone();
        s.positions = pos;
        s.keyMask = keyMask;
        s.pass = pass;
        s.dropout = train && dropoutEnabled;
        s.train = train;
        s.resIn = new Tensor[layers];
        s.ln1 = new Tensor[layers];
        s.ln1Mean = new Tensor[layers];
        s.ln1Rstd = new Tensor[layers];
        s.qkvRaw = new Tensor[layers];
        s.qkv = new Tensor[layers];
        s.qRstd = new Tensor[layers];
        s.kRstd = new Tensor[layers];
        s.probs = new Tensor[layers];
        s.probsUsed = new Tensor[layers];
        s.attn = new Tensor[layers];
        s.ln2 = new Tensor[layers];
        s.ln2Mean = new Tensor[layers];
        s.ln2Rstd = new Tensor[layers];
        s.mlpIn = new Tensor[layers];
        s.mlpAct = new Tensor[layers];
        s.resMid = new Tensor[layers];

        // Embeddings (+ learned positions), then embedding dropout.
        long pt;
        Tensor x = buffer(pass, n, d);
        pt = DecoderProfile.start();
        ops.embeddingForward(x, s.ids, pos, embedding.value(), positions == null ? null : positions.value());
        DecoderProfile.stop(Op.EMBEDDING_F, pt);
        dropout(s, config.embdDropout(), 0, x);
        s.x0 = x;
        if (invFreq != null) {
            s.cos = buffer(pass, n, hd / 2);
            s.sin = buffer(pass, n, hd / 2);
            ops.ropeTables(s.cos, s.sin, pos, invFreq);
        }
        Tensor branch = buffer(pass, n, d); // the attention's and the MLP's output before the residual add (not kept)
        for (int l = 0; l < layers; l++) {
            Block blk = blocks[l];
            s.resIn[l] = x;
            if (tap != null && tap.index() == l) backend.copy(x, tap.out().view(n, d));
            // Attention half: norm, q | k | v, (q/k norm), RoPE, masked softmax attention, output projection, residual.
            act(s, s.ln1, l, n, d);
            act(s, s.ln1Mean, l, n);
            act(s, s.ln1Rstd, l, n);
            pt = DecoderProfile.start();
            normForward(s.ln1[l], s.ln1Mean[l], s.ln1Rstd[l], x, blk.attnNormWeight(), blk.attnNormBias(), n);
            DecoderProfile.stop(Op.NORM_F, pt);
            Tensor qkv = act(s, blk.qNorm() != null ? s.qkvRaw : s.qkv, l, n, qkvW);
            pt = DecoderProfile.start();
            fusedProjection(blk.qkv(), qkv, qkvW, s.ln1[l], n);
            DecoderProfile.stop(Op.QKV_PROJ_F, pt);
            if (blk.qNorm() != null) {
                s.qkvRaw[l] = qkv;
                qkv = act(s, s.qkv, l, n, qkvW);
                backend.copy(s.qkvRaw[l], qkv); // v stays as projected
                act(s, s.qRstd, l, config.heads(), n);
                act(s, s.kRstd, l, config.kvHeads(), n);
                headNormForward(qkv, s.qkvRaw[l], blk.qNorm(), s.qRstd[l], 0, config.heads(), n, qkvW);
                headNormForward(qkv, s.qkvRaw[l], blk.kNorm(), s.kRstd[l], a, config.kvHeads(), n, qkvW);
            }
            pt = DecoderProfile.start();
            if (invFreq != null) {
                ops.rope(qkv, 0, qkvW, n, config.heads(), s.cos, s.sin, hd / 2, false);
                ops.rope(qkv, a, qkvW, n, config.kvHeads(), s.cos, s.sin, hd / 2, false);
            }
            s.qkv[l] = qkv;
            DecoderProfile.stop(Op.ROPE_QKNORM_F, pt);
            Attention shape;
            if (cache != null) {
                // Append this call's keys and values at rows [past, past + t) of the cache, then attend over all of them.
                Tensor kc = cache.keys[l], vc = cache.values[l];
                for (int b = 0; b < batch; b++) {
                    long src = b * t * qkvW, dst = (b * cache.capacity + past) * kvw;
                    ops.copyRows(kc, dst, kvw, qkv, src + a, qkvW, t, kvw);
                    ops.copyRows(vc, dst, kvw, qkv, src + a + kvw, qkvW, t, kvw);
                }
                shape = new Attention(batch, config.heads(), config.kvHeads(), hd, t, tk, past, qkv, qkvW, 0, kc, vc, kvw,
                    cache.capacity * kvw, 0, 0, keyMask, attentionScale(l));
            } else {
                shape = attentionShape(s, l, qkv);
            }
            act(s, s.probs, l, batch, config.heads(), t, tk);
            pt = DecoderProfile.start();
            ops.attentionScores(shape, s.probs[l]);
            DecoderProfile.stop(Op.ATTN_SCORES_SOFTMAX_F, pt);
            s.probsUsed[l] = s.probs[l];
            if (s.dropout && config.attnDropout() > 0) {
                s.probsUsed[l] = buffer(pass, batch, config.heads(), t, tk);
                backend.dropout(config.attnDropout(), pass.seed(), site(pass, 1 + 3L * l), s.probs[l], s.probsUsed[l]);
            }
            act(s, s.attn, l, n, a);
            pt = DecoderProfile.start();
            ops.attentionValues(shape, s.probsUsed[l], s.attn[l], a);
            DecoderProfile.stop(Op.ATTN_VALUES_F, pt);
            Tensor attnOut = branch;
            pt = DecoderProfile.start();
            projection(blk.attnOut(), attnOut, s.attn[l], n);
            DecoderProfile.stop(Op.ATTN_OUT_PROJ_F, pt);
            dropout(s, config.residDropout(), 2 + 3L * l, attnOut);
            Tensor mid = act(s, s.resMid, l, n, d);
            pt = DecoderProfile.start();
            backend.add(x, attnOut, mid);
            DecoderProfile.stop(Op.RESIDUAL_F, pt);
            s.resMid[l] = mid;
            // MLP half: norm, c_fc + GELU or gate | up + SwiGLU, down projection, residual.
            act(s, s.ln2, l, n, d);
            act(s, s.ln2Mean, l, n);
            act(s, s.ln2Rstd, l, n);
            pt = DecoderProfile.start();
            normForward(s.ln2[l], s.ln2Mean[l], s.ln2Rstd[l], mid, blk.mlpNormWeight(), blk.mlpNormBias(), n);
            DecoderProfile.stop(Op.NORM_F, pt);
            act(s, s.mlpIn, l, n, mlpInW);
            pt = DecoderProfile.start();
            fusedProjection(blk.mlpIn(), s.mlpIn[l], mlpInW, s.ln2[l], n);
            DecoderProfile.stop(Op.MLP_IN_PROJ_F, pt);
            act(s, s.mlpAct, l, n, inner);
            pt = DecoderProfile.start();
            if (config.mlp() == DecoderConfig.Mlp.SWIGLU) {
                ops.swigluForward(s.mlpAct[l], s.mlpIn[l]);
            } else {
                ops.geluForward(s.mlpAct[l], s.mlpIn[l]);
            }
            DecoderProfile.stop(Op.ACTIVATION_F, pt);
            Tensor mlpOut = branch;
            pt = DecoderProfile.start();
            projection(blk.mlpOut(), mlpOut, s.mlpAct[l], n);
            DecoderProfile.stop(Op.MLP_OUT_PROJ_F, pt);
            dropout(s, config.residDropout(), 3 + 3L * l, mlpOut);
            // Eval: the layer's input is dead once mid is made, so the output goes over it.
            Tensor out = train ? buffer(pass, n, d) : x;
            pt = DecoderProfile.start();
            backend.add(mid, mlpOut, out);
            DecoderProfile.stop(Op.RESIDUAL_F, pt);
            x = out;
        }
        s.lastRes = x;
        s.lnf = buffer(pass, n, d);
        s.lnfMean = buffer(pass, n);
        s.lnfRstd = buffer(pass, n);
        pt = DecoderProfile.start();
        normForward(s.lnf, s.lnfMean, s.lnfRstd, x, finalNormWeight, finalNormBias, n);
        DecoderProfile.stop(Op.NORM_F, pt);
        if (tap != null && tap.index() == layers) backend.copy(s.lnf, tap.out().view(n, d));
        if (cache != null) cache.length += t;
        saved = train ? s : null;
        return s.lnf;
    }

    private Attention attentionShape(Saved s, int l, Tensor qkv) {
        long hd = config.headDim(), a = config.heads() * hd, kvw = config.kvHeads() * hd, qkvW = a + 2 * kvw;
        return new Attention(s.batch, config.heads(), config.kvHeads(), hd, s.t, s.t, 0, qkv, qkvW, 0, qkv, qkv, qkvW,
            s.t * qkvW, a, a + kvw, s.keyMask, attentionScale(l));
    }

    /** 1 / sqrt(headDim) (GPT-2 without scale_attn_weights: 1), and GPT-2's optional 1 / (layer + 1). */
    private float attentionScale(int layer) {
        double scale = config.attnScale() ? 1 / Math.sqrt(config.headDim()) : 1;
        if (config.attnScaleByLayer()) scale /= layer + 1;
        return (float) scale;
    }

    /**
     * Layer l's activation of one kind, recorded in perLayer[l]: a new buffer in training (the
     * backward reads every layer's), else layer 0's buffer again (an eval forward needs one layer's
     * activations at a time: [B, H, T, T] probabilities per layer add up on long sequences).
     */
    private Tensor act(Saved s, Tensor[] perLayer, int l, long... shape) {
        Tensor t = !s.train && l > 0 ? perLayer[0] : buffer(s.pass, shape);
        perLayer[l] = t;
        return t;
    }

    private Tensor buffer(Layer.Pass pass, long... shape) {
        return backend.empty(pass.arena(), DType.F32, shape);
    }

    private static Tensor value(Parameter p) {
        return p == null ? null : p.value();
    }

    private static Tensor grad(Parameter p) {
        return p == null ? null : p.grad();
    }

    /** Dropout stream of one site (embedding 0; layer l: attention probs 1 + 3l, the two residual branches 2 + 3l and 3 + 3l) in step {@code step}. */
    private static long site(Layer.Pass pass, long site) {
        return (pass.step() << 44) + (site << 32);
    }

    /** When the forward applies dropout and p > 0: x = dropout(x), in place (the backward regenerates the mask from (seed, offset)). */
    private void dropout(Saved s, float p, long site, Tensor x) {
        if (s.dropout && p > 0) backend.dropout(p, s.pass.seed(), site(s.pass, site), x, x);
    }

    private void dropoutBackward(Saved s, float p, long site, Tensor dx) {
        if (s.dropout && p > 0) backend.dropoutBackward(p, s.pass.seed(), site(s.pass, site), dx, dx);
    }

    private void normForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Parameter w, Parameter b, long n) {
        if (config.norm() == DecoderConfig.Norm.LAYER_NORM) {
            ops.layerNormForward(out, mean, rstd, x, w.value(), value(b), config.normEps());
        } else {
            ops.rmsNormForward(out, rstd, x, w.value(), n, 1, config.hidden(), 0, config.hidden(), config.normEps());
        }
    }

    /** dx += norm backward (dx holds the residual stream's gradient, to which the norm's branch adds). */
    private void normBackward(Tensor dx, Tensor dout, Tensor x, Parameter w, Parameter b, Tensor mean, Tensor rstd, long n) {
        if (config.norm() == DecoderConfig.Norm.LAYER_NORM) {
            ops.layerNormBackward(dx, w.grad(), grad(b), dout, x, w.value(), mean, rstd, true);
        } else {
            ops.rmsNormBackward(dx, w.grad(), dout, x, w.value(), rstd, n, 1, config.hidden(), 0, config.hidden(), true);
        }
    }

    /** Qwen3's per-head RMSNorm over {@code heads} heads starting at column {@code col}: out and raw are [N, qkvW]; rstd [heads, N]. */
    private void headNormForward(Tensor out, Tensor raw, Parameter w, Tensor rstd, long col, int heads, long n, long qkvW) {
        ops.rmsNormForward(out, rstd, raw, w.value(), n, heads, config.headDim(), col, qkvW, config.normEps());
    }

    /** In place (dx = dout): each element's gradient is written after its incoming gradient is read. */
    private void headNormBackward(Tensor dqkv, Tensor raw, Parameter w, Tensor rstd, long col, int heads, long n, long qkvW) {
        ops.rmsNormBackward(dqkv, w.grad(), dqkv, raw, w.value(), rstd, n, heads, config.headDim(), col, qkvW, false);
    }

    /** out [n, p.out] = x [n, p.in] through projection p; the weight goes as the model holds it (its dtype is the ops' to accept). */
    private void projection(Proj p, Tensor out, Tensor x, long n) {
        ops.projectionForward(out, 0, p.spec().out(), x, p.spec().in(), p.weight().value(), value(p.bias()), n, p.spec().in(), p.spec().out(),
            p.spec().storedInOut());
    }

    /**
     * Projections of one input side by side in one output: q/k/v (or GPT-2's one c_attn), gate/up
     * (or c_fc). out [n, width]: projection j writes the columns after those of 0 .. j-1.
     */
    private void fusedProjection(List<Proj> projections, Tensor out, long width, Tensor x, long n) {
        long col = 0;
        for (Proj p : projections) {
            ops.projectionForward(out, col, width, x, p.spec().in(), p.weight().value(), value(p.bias()), n, p.spec().in(), p.spec().out(),
                p.spec().storedInOut());
            col += p.spec().out();
        }
    }

    /** The backward of {@link #fusedProjection}: dx [n, in] gets the sum of every projection's input gradient. */
    private void fusedProjectionBackward(List<Proj> projections, Tensor dx, Tensor dout, long width, Tensor x, long n) {
        long col = 0;
        boolean first = true;
        for (Proj p : projections) {
            projectionBackward(p, dx, !first, dout, col, width, x, n);
            col += p.spec().out();
            first = false;
        }
    }

    private void projectionBackward(Proj p, Tensor dx, boolean accumulateDx, Tensor dout, long col, long ldOut, Tensor x, long n) {
        ops.projectionBackward(dx, p.spec().in(), accumulateDx, p.weight().grad(), grad(p.bias()), dout, col, ldOut, x, p.spec().in(), p.weight().value(),
            n, p.spec().in(), p.spec().out(), p.spec().storedInOut());
    }

    // ---- loss and backward

    /**
     * transformers' causal-LM loss for logits [B, T, V] and labels [B, T] (usually the input ids;
     * -100 ignored): mean cross-entropy of position t against label t + 1. When {@code dlogits}
     * is not null it receives dL/dlogits [B, T, V]; it may be {@code logits} itself (overwritten
     * in place, which saves a [B, T, V] buffer when the logits are not needed after the loss).
     */
    public static double nextTokenLoss(Tensor logits, long[] labels, Tensor dlogits) {
        try (DecoderDeviceOps ops = DecoderDeviceOps.forBackend(logits.backend())) {
            long pt = DecoderProfile.start();
            double loss = ops.nextTokenLoss(logits, labels, dlogits);
            DecoderProfile.stop(Op.LOSS, pt);
            return loss;
        }
    }

    /** Accumulates every parameter's gradient from dL/dlogits [B, T, V] of the last training-mode forward (buffers in the forward's arena). */
    public void backward(Tensor dlogits) {
        Saved s = saved;
        if (s == null) throw new IllegalStateException("DecoderModel.backward: no training-mode forward to differentiate");
        requireTrainable();
        long n = s.batch * s.t, d = config.hidden();
        if (!Arrays.equals(dlogits.shape(), new long[] {s.batch, s.t, config.vocab()})) {
            throw new IllegalArgumentException("backward: dlogits " + dlogits.describe() + ", expected [" + s.batch + ", " + s.t + ", " + config.vocab() + "]");
        }
        // lm_head (tied: into the embedding's gradient), then the rest from the final norm's output down.
        Tensor dlnf = buffer(s.pass, n, d);
        long pt = DecoderProfile.start();
        ops.projectionBackward(dlnf, d, false, lmHead.grad(), null, dlogits, 0, config.vocab(), s.lnf, d, lmHead.value(), n, d, config.vocab(), false);
        DecoderProfile.stop(Op.LM_HEAD_B, pt);
        backwardHidden(dlnf, null);
    }

    /**
     * Accumulates every parameter's gradient but the lm_head's from dL/d(final norm output) F32
     * [B * T, D] of the last training-mode forward (the lm_head's own gradient is the caller's, as
     * in a chunked loss). {@code extra}, when not null, adds a gradient for one more hidden state
     * (a hint's dL/dh at {@code extra.index()}, numbered as {@link HiddenTap}). {@code dHidden} is
     * read and may be overwritten.
     */
    public void backwardHidden(Tensor dHidden, HiddenTap extra) {
        Saved s = saved;
        if (s == null) throw new IllegalStateException("DecoderModel.backward: no training-mode forward to differentiate");
        requireTrainable();
        Layer.Pass pass = s.pass;
        long n = s.batch * s.t, d = config.hidden(), hd = config.headDim(), a = config.heads() * hd, kvw = config.kvHeads() * hd, qkvW = a + 2 * kvw;
        long inner = config.intermediate(), mlpInW = config.mlp() == DecoderConfig.Mlp.SWIGLU ? 2 * inner : inner;
        if (dHidden.dtype() != DType.F32 || dHidden.numel() != n * d) {
            throw new IllegalArgumentException("backwardHidden: " + dHidden.describe() + ", expected F32 [" + n + ", " + d + "]");
        }
        if (extra != null) {
            checkHiddenIndex(extra.index(), "hidden-state gradient");
            if (extra.out().dtype() != DType.F32 || extra.out().numel() != n * d) {
                throw new IllegalArgumentException("hidden-state gradient: " + extra.out().describe() + ", expected F32 [" + n + ", " + d + "]");
            }
        }
        Tensor dlnf = dHidden.view(n, d);
        if (extra != null && extra.index() == config.layers()) backend.axpy(1f, extra.out().view(n, d), dlnf);
        long pt;
        Tensor dres = buffer(pass, n, d); // the residual stream's gradient, carried down the layers
        backend.zero(dres);
        pt = DecoderProfile.start();
        normBackward(dres, dlnf, s.lastRes, finalNormWeight, finalNormBias, s.lnfMean, s.lnfRstd, n);
        DecoderProfile.stop(Op.NORM_B, pt);
        // Gradient buffers of one layer, reused by every layer (each is fully written before it is read).
        Tensor dbranch = buffer(pass, n, d), dnorm = buffer(pass, n, d), dact = buffer(pass, n, inner), dmlpIn = buffer(pass, n, mlpInW);
        Tensor dattn = buffer(pass, n, a), dqkv = buffer(pass, n, qkvW), dprobs = buffer(pass, s.batch, config.heads(), s.t, s.t);
        for (int l = config.layers() - 1; l >= 0; l--) {
            Block blk = blocks[l];
            // Layer l's output is hidden state l + 1 (the last layer's is not a hidden state: the final norm's is).
            if (extra != null && extra.index() == l + 1 && l + 1 < config.layers()) backend.axpy(1f, extra.out().view(n, d), dres);
            // MLP half: dres is d(out) = d(mid) + d(mlp branch).
            pt = DecoderProfile.start();
            backend.copy(dres, dbranch);
            dropoutBackward(s, config.residDropout(), 3 + 3L * l, dbranch);
            DecoderProfile.stop(Op.RESIDUAL_B, pt);
            pt = DecoderProfile.start();
            projectionBackward(blk.mlpOut(), dact, false, dbranch, 0, d, s.mlpAct[l], n);
            DecoderProfile.stop(Op.MLP_OUT_PROJ_B, pt);
            pt = DecoderProfile.start();
            if (config.mlp() == DecoderConfig.Mlp.SWIGLU) {
                ops.swigluBackward(dmlpIn, dact, s.mlpIn[l]);
            } else {
                ops.geluBackward(dmlpIn, dact, s.mlpIn[l]);
            }
            DecoderProfile.stop(Op.ACTIVATION_B, pt);
            pt = DecoderProfile.start();
            fusedProjectionBackward(blk.mlpIn(), dnorm, dmlpIn, mlpInW, s.ln2[l], n);
            DecoderProfile.stop(Op.MLP_IN_PROJ_B, pt);
            pt = DecoderProfile.start();
            normBackward(dres, dnorm, s.resMid[l], blk.mlpNormWeight(), blk.mlpNormBias(), s.ln2Mean[l], s.ln2Rstd[l], n);
            DecoderProfile.stop(Op.NORM_B, pt);
            // Attention half: dres is now d(mid) = d(in) + d(attention branch).
            pt = DecoderProfile.start();
            backend.copy(dres, dbranch);
            dropoutBackward(s, config.residDropout(), 2 + 3L * l, dbranch);
            DecoderProfile.stop(Op.RESIDUAL_B, pt);
            pt = DecoderProfile.start();
            projectionBackward(blk.attnOut(), dattn, false, dbranch, 0, d, s.attn[l], n);
            DecoderProfile.stop(Op.ATTN_OUT_PROJ_B, pt);
            pt = DecoderProfile.start();
            backend.zero(dqkv); // kv heads shared by several query heads accumulate
            int layer = l;
            ops.attentionBackward(attentionShape(s, l, s.qkv[l]), s.probs[l], s.probsUsed[l], dprobs, dattn, a, dqkv, () -> {
                    dropoutBackward(s, config.attnDropout(), 1 + 3L * layer, dprobs);
                });
            DecoderProfile.stop(Op.ATTENTION_B, pt);
            pt = DecoderProfile.start();
            if (invFreq != null) {
                ops.rope(dqkv, 0, qkvW, n, config.heads(), s.cos, s.sin, hd / 2, true);
                ops.rope(dqkv, a, qkvW, n, config.kvHeads(), s.cos, s.sin, hd / 2, true);
            }
            if (blk.qNorm() != null) {
                headNormBackward(dqkv, s.qkvRaw[l], blk.qNorm(), s.qRstd[l], 0, config.heads(), n, qkvW);
                headNormBackward(dqkv, s.qkvRaw[l], blk.kNorm(), s.kRstd[l], a, config.kvHeads(), n, qkvW);
            }
            DecoderProfile.stop(Op.ROPE_QKNORM_B, pt);
            pt = DecoderProfile.start();
            fusedProjectionBackward(blk.qkv(), dnorm, dqkv, qkvW, s.ln1[l], n);
            DecoderProfile.stop(Op.QKV_PROJ_B, pt);
            pt = DecoderProfile.start();
            normBackward(dres, dnorm, s.resIn[l], blk.attnNormWeight(), blk.attnNormBias(), s.ln1Mean[l], s.ln1Rstd[l], n);
            DecoderProfile.stop(Op.NORM_B, pt);
        }
        if (extra != null && extra.index() == 0) backend.axpy(1f, extra.out().view(n, d), dres);
        dropoutBackward(s, config.embdDropout(), 0, dres);
        pt = DecoderProfile.start();
        ops.embeddingBackward(embedding.grad(), positions == null ? null : positions.grad(), dres, s.ids, s.positions);
        DecoderProfile.stop(Op.EMBEDDING_B, pt);
        saved = null;
    }

    /** The lm_head's weight [V, D] (tied: the token embedding itself). */
    public Parameter lmHead() {
        return lmHead;
    }

    /** Names of the parameters in module order (for reports). */
    public List<String> parameterNames() {
        return new ArrayList<>(parameters.keySet());
    }

    @Override
    public void close() {
        for (Parameter p : parameters.values()) p.close();
        if (ops != null) ops.close();
    }
}
