package org.distill4j.core.lm;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import org.distill4j.core.Bf16;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.io.AtomicFiles;
import org.distill4j.core.io.Safetensors;

/**
 * The weights of a Hugging Face model folder: {@code model.safetensors}, or the shards that
 * {@code model.safetensors.index.json} lists. Every file is memory-mapped (Safetensors); tensors
 * are converted from F32, BF16 or F16 straight from the mapping into the model's float32 tensors,
 * never through a Java array. Writing produces what {@code save_pretrained} writes: config.json
 * and one model.safetensors with HF key names in the model's dtype, a tied lm_head omitted.
 */
public final class HfCheckpoint implements AutoCloseable {
    static final String SINGLE = "model.safetensors", INDEX = "model.safetensors.index.json";
    private static final ObjectMapper JSON = new ObjectMapper();

    private final Path dir;
    private final List<Safetensors> files = new ArrayList<>();
    private final Map<String, Safetensors> byKey = new TreeMap<>();

    private HfCheckpoint(Path dir) {
        this.dir = dir;
    }

    /** Whether {@code dir} has weights (model.safetensors or a shard index), as opposed to a config.json alone. */
    public static boolean hasWeights(Path dir) {
        return Files.exists(dir.resolve(INDEX)) || Files.exists(dir.resolve(SINGLE));
    }

    /** Opens (maps) every weight file of {@code dir}; a listed shard that is absent, or a key not where the index says, is an error. */
    public static HfCheckpoint open(Path dir) throws IOException {
        HfCheckpoint c = new HfCheckpoint(dir);
        try {
            Path index = dir.resolve(INDEX), single = dir.resolve(SINGLE);
            if (Files.exists(index)) {
                c.openShards(index);
            } else if (Files.exists(single)) {
                Safetensors st = c.add(single);
                for (String key : st.entries().keySet()) c.byKey.put(key, st);
            } else {
                throw new IllegalArgumentException(dir + ": no " + SINGLE + " or " + INDEX + " (the model's weights)");
            }
            return c;
        } catch (IOException | RuntimeException e) {
            c.close();
            throw e;
        }
    }

    private Safetensors add(Path file) throws IOException {
        Safetensors st = Safetensors.open(file);
        files.add(st);
        return st;
    }

    private void openShards(Path index) throws IOException {
        JsonNode root;
        try {
            root = JSON.readTree(Files.readString(index));
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IllegalArgumentException(index + ": malformed JSON: " + e.getOriginalMessage());
        }
        JsonNode map = root == null ? null : root.get("weight_map");
        if (map == null || !map.isObject()) throw new IllegalArgumentException(index + ": 'weight_map' is missing (an object of tensor name -> shard file)");
        Map<String, List<String>> keysByShard = new TreeMap<>();
        for (Map.Entry<String, JsonNode> e : map.properties()) {
            if (!e.getValue().isTextual()) throw new IllegalArgumentException(index + ": 'weight_map." + e.getKey() + "' must be a file name");
            keysByShard.computeIfAbsent(e.getValue().asText(), k -> new ArrayList<>()).add(e.getKey());
        }
        for (Map.Entry<String, List<String>> shard : keysByShard.entrySet()) {
            Path file = dir.resolve(shard.getKey()).normalize();
            if (!file.startsWith(dir.normalize()) || shard.getKey().contains("/")) {
                throw new IllegalArgumentException(index + ": shard '" + shard.getKey() + "' is not a file of the folder");
            }
            if (!Files.exists(file)) {
                int more = shard.getValue().size() - 1;
                throw new IllegalArgumentException(index + ": lists shard '" + shard.getKey() + "' (for '" + shard.getValue().getFirst() + "'"
                    + (more > 0 ? " and " + more + " more" : "") + "), which does not exist");
            }
            Safetensors st = add(file);
            for (String key : shard.getValue()) {
                if (!st.entries().containsKey(key)) throw new IllegalArgumentException(index + ": lists '" + key + "' in " + file + ", which does not hold it");
                byKey.put(key, st);
            }
        }
    }

    /** Every key stored, with the file holding it. */
    Map<String, Safetensors> keys() {
        return byKey;
    }

    /** The dtypes stored on disk, e.g. "BF16" or "F32" (buffers excluded). */
    String dtypes(DecoderFamily family) {
        TreeSet<String> d = new TreeSet<>();
        byKey.forEach((k, st) -> {
            if (!family.isBuffer(k)) d.add(st.entries().get(k).dtype());
        });
        return String.join(", ", d);
    }

    /**
     * Where tensor {@code name} is stored: its own key, or the key without the family's optional
     * prefix (GPT-2 hub files). Null when absent.
     */
    String storedKey(String name, String optionalPrefix) {
        if (byKey.containsKey(name)) return name;
        if (optionalPrefix != null && name.startsWith(optionalPrefix)) {
            String shorter = name.substring(optionalPrefix.length());
            if (byKey.containsKey(shorter)) return shorter;
        }
        return null;
    }

    /**
     * Copies stored tensor {@code key} into {@code dst} (F32 or BF16 of the expected shape): into
     * F32 widening BF16 and F16 exactly; into BF16 (a frozen bf16 model) BF16 as it is and F32 or
     * F16 rounded to nearest even. The error names the tensor, the file and both shapes, or the dtype.
     */
    void copyInto(String key, Tensor dst) {
        Safetensors st = byKey.get(key);
        Safetensors.Entry e = st.entries().get(key);
        if (!Arrays.equals(e.shape(), dst.shape())) {
            throw new IllegalArgumentException(st.file() + ": tensor '" + key + "' has shape " + Arrays.toString(e.shape()) + ", expected "
                + Arrays.toString(dst.shape()));
        }
        if (dst.dtype() == DType.BF16) {
            copyIntoBf16(st, e, key, dst);
            return;
        }
        MemorySegment src = st.bytes(e);
        long n = dst.numel();
        if (e.dtype().equals("F32")) {
            dst.backend().copyFromHost(src, dst); // from the mapping straight to the tensor (a device copy on CUDA)
            return;
        }
        // BF16 / F16 widen element by element from the mapping into the tensor (CPU) or into a host staging
        // buffer the backend then copies to the device: the file's bytes never pass through a Java array.
        // Shared, as the tensors' arenas: a confined segment here would give the accessors a second profile.
        try (Arena staging = Arena.ofShared()) {
            boolean host = dst.backend().isHost();
            MemorySegment out = host ? dst.data() : staging.allocate(Math.max(1, dst.byteSize()), 16).asSlice(0, dst.byteSize());
            switch (e.dtype()) {
                case "BF16" -> {
                    for (long i = 0; i < n; i++) out.setAtIndex(ValueLayout.JAVA_FLOAT, i, Bf16.toFloat(src.get(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i)));
                }
                case "F16" -> {
                    for (long i = 0; i < n; i++) out.setAtIndex(ValueLayout.JAVA_FLOAT, i, Float.float16ToFloat(src.get(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i)));
                }
                default -> throw new IllegalArgumentException(st.file() + ": tensor '" + key + "' is " + e.dtype() + Arrays.toString(e.shape())
                    + "; weights must be F32, BF16 or F16");
            }
            if (!host) dst.backend().copyFromHost(out, dst);
        }
    }

    /**
     * dst BF16 (a frozen bf16 model's weight) from a BF16, F32 or F16 entry: BF16 bytes as they are
     * (straight from the mapping to the tensor, a device copy on CUDA), F32 and F16 rounded to
     * nearest even into the tensor (CPU) or into a host staging buffer the backend then copies to
     * the device, as {@link #copyInto} stages float32.
     */
    private static void copyIntoBf16(Safetensors st, Safetensors.Entry e, String key, Tensor dst) {
        MemorySegment src = st.bytes(e);
        long n = dst.numel();
        if (e.dtype().equals("BF16")) {
            dst.backend().copyFromHost(src.asSlice(0, 2 * n), dst);
            return;
        }
        // Shared, as the tensors' arenas (see copyInto).
        try (Arena staging = Arena.ofShared()) {
            boolean host = dst.backend().isHost();
            MemorySegment out = host ? dst.data() : staging.allocate(Math.max(2, dst.byteSize()), 16).asSlice(0, dst.byteSize());
            switch (e.dtype()) {
                case "F32" -> {
                    for (long i = 0; i < n; i++) out.setAtIndex(ValueLayout.JAVA_SHORT, i, Bf16.fromFloat(src.get(ValueLayout.JAVA_FLOAT_UNALIGNED, 4 * i)));
                }
                case "F16" -> {
                    for (long i = 0; i < n; i++) {
                        out.setAtIndex(ValueLayout.JAVA_SHORT, i, Bf16.fromFloat(Float.float16ToFloat(src.get(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i))));
                    }
                }
                default -> throw new IllegalArgumentException(st.file() + ": tensor '" + key + "' is " + e.dtype() + Arrays.toString(e.shape())
                    + "; weights must be F32, BF16 or F16");
            }
            if (!host) dst.backend().copyFromHost(out, dst);
        }
    }

    /**
     * Writes {@code dir}/config.json (the model's config, its {@code dtype} set to the one written)
     * and {@code dir}/model.safetensors (every parameter under its HF name, stored as {@code dtype}:
     * F32, or BF16 / F16 rounded to nearest even; tied lm_head omitted as save_pretrained does),
     * each atomically; a shard index left from an earlier save is removed so transformers reads the
     * new file.
     */
    static void save(Path dir, DecoderConfig config, Map<String, Tensor> tensors, DType dtype) throws IOException {
        String torchName = switch (dtype) {
            case F32 -> "float32";
            case BF16 -> "bfloat16";
            case F16 -> "float16";
            default -> throw new IllegalArgumentException("a decoder is written as F32, BF16 or F16, not " + dtype);
        };
        Files.createDirectories(dir);
        ObjectNode json = config.json().deepCopy();
        json.putArray("architectures").add(config.family().architecture());
        json.put("tie_word_embeddings", config.tied());
        if (json.has("torch_dtype")) json.put("torch_dtype", torchName);
        json.put("dtype", torchName);
        Safetensors.write(dir.resolve(SINGLE), new LinkedHashMap<>(tensors), Map.of("format", "pt"), dtype);
        Path cfg = dir.resolve("config.json"), tmp = AtomicFiles.temporaryFor(cfg);
        try {
            Files.write(tmp, JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(json));
            AtomicFiles.publish(tmp, cfg);
        } finally {
            Files.deleteIfExists(tmp);
        }
        Files.deleteIfExists(dir.resolve(INDEX));
    }

    @Override
    public void close() {
        for (Safetensors st : files) st.close();
    }
}
