package org.distill4j.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.PrintWriter;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.Callable;
import org.distill4j.core.Backend;
import org.distill4j.core.Tensor;
import org.distill4j.core.lm.DecoderConfig;
import org.distill4j.core.lm.DecoderModel;
import org.distill4j.core.lm.TokenSampler;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.tok.StreamingDecoder;
import org.distill4j.core.tok.Tokenizer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill generate}: a continuation of a prompt by a Hugging Face decoder folder, greedy or sampled, one token
 * per forward with the KV cache (a prefill of the prompt, then [1, 1] steps), printed as it comes.
 */
@Command(name = "generate", mixinStandardHelpOptions = true,
    description = {"Continues a prompt with a Hugging Face decoder folder (gpt2, llama, mistral,",
        "qwen2, qwen3): greedy (temperature 0, the default) or sampled, with the KV",
        "cache, printing the text as it is generated and stopping at the",
        "end-of-text token (generation_config.json / config.json eos_token_id, else",
        "the tokenizer's). The prompt's ids are tokenizer(prompt) as transformers",
        "gives them by default (add_special_tokens=True: the tokenizer.json template;",
        "nothing for GPT-2, BOS for Llama). The continuation goes to stdout, a",
        "summary line to stderr."},
    footer = {"", "Examples:", "  distill generate --model ./student --prompt 'Call me Ishmael.' --max-new-tokens 50",
        "  distill generate --model ./student --prompt 'The whale' --max-new-tokens 50 --temperature 0.8 --top-k 40 --seed 1",
        "  distill generate --model ./student --prompt-ids 464,6512 --max-new-tokens 10"})
final class GenerateCommand implements Callable<Integer> {
    private static final ObjectMapper JSON = new ObjectMapper();

    @Option(names = "--model", required = true, paramLabel = "DIR", description = "a Hugging Face decoder folder (config.json + model.safetensors)")
    Path model;

    @Option(names = "--tokenizer", paramLabel = "DIR|tokenizer.json", description = "the tokenizer (default: the model folder's tokenizer.json)")
    Path tokenizer;

    @Option(names = "--prompt", paramLabel = "TEXT", description = "the prompt text") String prompt;

    @Option(names = "--prompt-ids", paramLabel = "ID[,ID...]", split = ",", description = "the prompt as token ids (instead of --prompt; no tokenizer needed: ids are printed)")
    long[] promptIds;

    @Option(names = "--max-new-tokens", required = true, paramLabel = "N", description = "tokens to generate at most") int maxNewTokens;

    @Option(names = "--temperature", defaultValue = "0", paramLabel = "T", description = "0: greedy (argmax); > 0: sample softmax(logits / T) (default: ${DEFAULT-VALUE})")
    double temperature;

    @Option(names = "--top-k", defaultValue = "0", paramLabel = "K", description = "sample among the K most likely tokens only; 0: all (default: ${DEFAULT-VALUE})")
    int topK;

    @Option(names = "--seed", defaultValue = "0", paramLabel = "S", description = "the sampling seed: the same seed gives the same text (default: ${DEFAULT-VALUE})")
    long seed;

    @Option(names = "--dtype", defaultValue = "f32", paramLabel = "f32|bf16|stored",
        description = "decoders: float32, or bf16 matrix products (bf16 weights and inputs, float32 sums; the oneDNN engine and CUDA run them natively), "
            + "or stored: bf16 for a checkpoint stored in bf16 where that is native (default: ${DEFAULT-VALUE})") String dtype;
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "cpu|cuda", description = "where to compute (default: ${DEFAULT-VALUE})")
    String device;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (maxNewTokens < 1) throw new IllegalArgumentException("--max-new-tokens must be >= 1, got " + maxNewTokens);
        if (!(temperature >= 0) || Double.isInfinite(temperature)) throw new IllegalArgumentException("--temperature must be a number >= 0, got " + temperature);
        if (topK < 0) throw new IllegalArgumentException("--top-k must be >= 0, got " + topK);
        if ((prompt == null) == (promptIds == null)) throw new IllegalArgumentException("give exactly one of --prompt TEXT and --prompt-ids ID[,ID...]");
        Devices.check(device);
        if (!Files.isDirectory(model)) throw new IllegalArgumentException("--model " + model + ": not a folder (expected a Hugging Face decoder folder)");
        DecoderConfig config = DecoderConfig.read(model);
        Path tokenizerPath = tokenizer;
        if (tokenizerPath == null && Files.isRegularFile(model.resolve("tokenizer.json"))) tokenizerPath = model;
        if (tokenizerPath == null && prompt != null) {
            throw new IllegalArgumentException("model " + model + " has no tokenizer.json; give --tokenizer DIR|tokenizer.json (or the prompt as --prompt-ids)");
        }
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        try (Tokenizer tok = tokenizerPath == null ? null : Tokenizer.open(tokenizerPath)) {
            if (tok != null && tok.vocabSize() > config.vocab()) {
                throw new IllegalArgumentException("tokenizer " + tok.source() + " has " + tok.vocabSize() + " ids, more than the vocabulary " + config.vocab() + " of "
                    + config.file());
            }
            long[] ids;
            if (prompt != null) {
                int[] encoded = tok.encodeWithSpecialTokens(prompt);
                ids = new long[encoded.length];
                for (int i = 0; i < ids.length; i++) ids[i] = encoded[i];
            } else {
                ids = promptIds.clone();
            }
            if (ids.length == 0) throw new IllegalArgumentException("the prompt is empty (no tokens); generation needs at least one");
            for (int i = 0; i < ids.length; i++) {
                if (ids[i] < 0 || ids[i] >= config.vocab()) {
                    throw new IllegalArgumentException("prompt token " + i + " is id " + ids[i] + ", outside the vocabulary [0, " + config.vocab() + ") of " + config.file());
                }
            }
            long context = config.maxPositions();
            if ((long) ids.length + maxNewTokens > context) {
                throw new IllegalArgumentException("the prompt's " + ids.length + " tokens + --max-new-tokens " + maxNewTokens + " exceed the context of " + config.file()
                    + " ('" + (config.rope() == null ? "n_positions" : "max_position_embeddings") + "' = " + context + ")");
            }
            Set<Long> eos = endOfText(model, tok);

            StreamingDecoder stream = tok == null ? null : new StreamingDecoder(tok);
            List<Long> generated = new ArrayList<>();
            boolean stoppedAtEos = false;
            long started = System.nanoTime();
            try (Backend b = Devices.openForDecoder(device); DecoderModel m = DecoderDtype.parse("--dtype", dtype).load(b, model);
                 DecoderModel.KvCache cache = m.newCache(1, ids.length + maxNewTokens)) {
                long[] step = ids; // the prefill, then one token per forward
                for (int n = 0; n < maxNewTokens; n++) {
                    long next;
                    try (Arena arena = Arena.ofShared()) {
                        Tensor logits = m.forward(new Layer.Pass(b, arena, false, 0, 0), step, 1, step.length, null, null, cache); // [1, t, V]
                        next = choose(lastRow(logits), n);
                    }
                    if (eos.contains(next)) {
                        stoppedAtEos = true;
                        break;
                    }
                    generated.add(next);
                    if (stream == null) out.print((n == 0 ? "" : " ") + next);
                    else out.print(stream.append((int) next));
                    out.flush();
                    step = new long[] {next};
                }
            }
            if (stream != null) out.print(stream.finish());
            out.println();
            out.flush();
            double s = (System.nanoTime() - started) / 1e9;
            err.printf("generate: %d prompt tokens + %d new (%s), %.2f s, %.1f tokens/s%n", ids.length, generated.size(),
                stoppedAtEos ? "stopped at end-of-text" : "--max-new-tokens reached", s, generated.size() / Math.max(s, 1e-9));
        }
        return 0;
    }

    /** The last position's logits [V] of logits F32 [1, t, V], read through the backend (host memory on the CPU, a copy from the GPU on CUDA). */
    private static float[] lastRow(Tensor logits) {
        long t = logits.size(1);
        return logits.view(t, logits.size(2)).narrow0(t - 1, 1).toFloatArray();
    }

    /** The next token (draw n of the seed): {@link TokenSampler}, with this command's temperature and top-k. */
    long choose(float[] logits, int n) {
        return TokenSampler.choose(logits, logits.length, temperature, topK, seed, n);
    }

    /** End-of-text ids as generate() reads them: generation_config.json's eos_token_id, else config.json's (an int or a list), else the tokenizer's. */
    private static Set<Long> endOfText(Path dir, Tokenizer tok) throws IOException {
        Set<Long> ids = new LinkedHashSet<>();
        for (String name : new String[] {"generation_config.json", "config.json"}) {
            Path f = dir.resolve(name);
            if (!Files.isRegularFile(f)) continue;
            JsonNode eos;
            try {
                eos = JSON.readTree(f.toFile()).path("eos_token_id");
            } catch (com.fasterxml.jackson.core.JacksonException e) {
                throw new IllegalArgumentException(f + ": malformed JSON: " + e.getOriginalMessage());
            }
            if (eos.isIntegralNumber()) ids.add(eos.asLong());
            for (JsonNode e : eos.isArray() ? eos : JSON.createArrayNode()) if (e.isIntegralNumber()) ids.add(e.asLong());
            if (!ids.isEmpty()) return ids;
        }
        if (tok != null && tok.eosId().isPresent()) ids.add((long) tok.eosId().getAsInt());
        return ids;
    }
}
