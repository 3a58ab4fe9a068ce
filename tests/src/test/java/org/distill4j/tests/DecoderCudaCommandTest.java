package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Path;
import java.util.Arrays;
import org.distill4j.cli.Main;
import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.io.Npy;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code distill predict / generate / eval --model DIR --device cuda} on the decoder fixtures. Without
 * a GPU each fails in one line with exit 2 ("distill predict: --device cuda: no GPU: ..."); with one,
 * each runs the decoder on CUDA (strict FP32) and gives the CPU's answer: predict's logits within
 * 1e-4 of the CPU's relative to each row's max |logit|, the same greedy tokens from generate (the KV
 * cache on the GPU), eval's loss within 1e-5; the same with --dtype bf16 against the CPU's bf16 runs. Not tagged gpu: it checks the right thing on either machine.
 */
class DecoderCudaCommandTest {
    private static final Path LM = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/lm").normalize();
    private static boolean gpu;

    @TempDir
    Path tmp;

    @BeforeAll
    static void probe() {
        try (CudaBackend b = CudaBackend.create(0)) {
            gpu = true;
            System.out.println("DecoderCudaCommandTest: a GPU (" + b.name() + "): the CUDA runs are compared with the CPU's");
        } catch (BackendUnavailableException e) {
            gpu = false;
            System.out.println("DecoderCudaCommandTest: no GPU: checking the one-line refusal (" + e.getMessage().lines().findFirst().orElse("") + ")");
        }
    }

    private static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    /** On a GPU: runs; without one: exit 2 and one line naming the flag. Returns the run's output, or null without a GPU. */
    private static String[] onCuda(String command, String... args) {
        String[] all = new String[args.length + 3];
        all[0] = command;
        System.arraycopy(args, 0, all, 1, args.length);
        all[args.length + 1] = "--device";
        all[args.length + 2] = "cuda";
        String[] r = run(all);
        if (gpu) {
            assertEquals("0", r[0], command + " --device cuda: " + r[2]);
            return r;
        }
        assertEquals("2", r[0], command + " --device cuda without a GPU: " + r[2]);
        assertEquals(1, r[2].strip().lines().count(), r[2]);
        assertTrue(r[2].startsWith("distill " + command + ": --device cuda: "), r[2]);
        return null;
    }

    @Test
    void predictOnCudaGivesTheCpuLogits() throws Exception {
        for (String model : new String[] {"gpt2", "llama-gqa", "qwen3", "llama-tied-rope3-bf16"}) {
            Path dir = LM.resolve(model);
            long[] ids = new long[2 * 9];
            for (int i = 0; i < ids.length; i++) ids[i] = (i * 37 + 5) % 90;
            Path in = tmp.resolve(model + "-ids.npy"), cpuOut = tmp.resolve(model + "-cpu.npy"), gpuOut = tmp.resolve(model + "-cuda.npy");
            Npy.writeLongs(in, ids, 2, 9);
            String[] c = run("predict", "--model", dir.toString(), "--input", in.toString(), "--output", cpuOut.toString());
            assertEquals("0", c[0], c[2]);
            if (onCuda("predict", "--model", dir.toString(), "--input", in.toString(), "--output", gpuOut.toString()) == null) continue;
            Npy.Array want = Npy.read(cpuOut), got = Npy.read(gpuOut);
            assertArrayEquals(want.shape(), got.shape());
            float[] w = want.toFloats(), g = got.toFloats();
            int v = (int) want.shape()[2];
            for (int row = 0; row < w.length / v; row++) {
                double scale = 0, diff = 0;
                for (int j = 0; j < v; j++) {
                    scale = Math.max(scale, Math.abs(w[row * v + j]));
                    diff = Math.max(diff, Math.abs(w[row * v + j] - g[row * v + j]));
                }
                assertTrue(diff <= 1e-4 * scale, model + " row " + row + ": CUDA logits differ from the CPU's by " + diff + " (row max " + scale + ")");
            }
        }
    }

    @Test
    void greedyGenerateOnCudaGivesTheCpuTokens() {
        for (String model : new String[] {"gpt2", "qwen3"}) {
            String dir = LM.resolve(model).toString();
            String[] c = run("generate", "--model", dir, "--prompt-ids", "4,89,61", "--max-new-tokens", "12");
            assertEquals("0", c[0], c[2]);
            String[] g = onCuda("generate", "--model", dir, "--prompt-ids", "4,89,61", "--max-new-tokens", "12");
            if (g != null) assertEquals(c[1], g[1], model + ": greedy tokens on CUDA vs the CPU");
        }
    }

    @Test
    void evalOnCudaGivesTheCpuLoss() throws Exception {
        Path dir = LM.resolve("llama-gqa"), file = tmp.resolve("tokens.npy");
        long[] ids = new long[40];
        for (int i = 0; i < ids.length; i++) ids[i] = (i * 13 + 3) % 100;
        Npy.writeLongs(file, ids, ids.length);
        String[] c = run("eval", "--model", dir.toString(), "--data", "tokens:" + file, "--seq-len", "7");
        assertEquals("0", c[0], c[2]);
        String[] g = onCuda("eval", "--model", dir.toString(), "--data", "tokens:" + file, "--seq-len", "7");
        if (g == null) return;
        assertEquals(loss(c[1]), loss(g[1]), 1e-5, "eval loss on CUDA vs the CPU: " + Arrays.toString(g));
    }

    /**
     * --dtype bf16 on CUDA (cublasGemmEx, the bf16 gather): predict's logits within 1e-4 of the CPU's
     * bf16 run relative to each row's max |logit|, generate's greedy tokens and eval's loss (1e-5
     * relative) as the CPU's bf16 model gives them. Without a GPU each exits 2 in one line.
     */
    @Test
    void bf16OnCudaGivesTheCpuBf16Answers() throws Exception {
        for (String model : new String[] {"gpt2", "qwen3", "llama-tied-rope3-bf16"}) {
            Path dir = LM.resolve(model);
            long[] ids = new long[2 * 9];
            for (int i = 0; i < ids.length; i++) ids[i] = (i * 41 + 7) % 90;
            Path in = tmp.resolve(model + "-bf16-ids.npy"), cpuOut = tmp.resolve(model + "-bf16-cpu.npy"), gpuOut = tmp.resolve(model + "-bf16-cuda.npy");
            Npy.writeLongs(in, ids, 2, 9);
            String[] c = run("predict", "--model", dir.toString(), "--input", in.toString(), "--output", cpuOut.toString(), "--dtype", "bf16");
            assertEquals("0", c[0], c[2]);
            if (onCuda("predict", "--model", dir.toString(), "--input", in.toString(), "--output", gpuOut.toString(), "--dtype", "bf16") == null) continue;
            float[] w = Npy.read(cpuOut).toFloats(), g = Npy.read(gpuOut).toFloats();
            assertEquals(w.length, g.length, model + ": logits sizes");
            int v = (int) Npy.read(cpuOut).shape()[2];
            for (int row = 0; row < w.length / v; row++) {
                double scale = 0, diff = 0;
                for (int j = 0; j < v; j++) {
                    scale = Math.max(scale, Math.abs(w[row * v + j]));
                    diff = Math.max(diff, Math.abs(w[row * v + j] - g[row * v + j]));
                }
                assertTrue(diff <= 1e-4 * scale, model + " bf16 row " + row + ": CUDA logits differ from the CPU's by " + diff + " (row max " + scale + ")");
            }
        }
        String qwen = LM.resolve("qwen3").toString();
        String[] c = run("generate", "--model", qwen, "--prompt-ids", "4,89,61", "--max-new-tokens", "12", "--dtype", "bf16");
        assertEquals("0", c[0], c[2]);
        String[] g = onCuda("generate", "--model", qwen, "--prompt-ids", "4,89,61", "--max-new-tokens", "12", "--dtype", "bf16");
        if (g != null) assertEquals(c[1], g[1], "qwen3: greedy bf16 tokens on CUDA vs the CPU");
        Path file = tmp.resolve("tokens-bf16.npy");
        long[] ids = new long[40];
        for (int i = 0; i < ids.length; i++) ids[i] = (i * 13 + 3) % 100;
        Npy.writeLongs(file, ids, ids.length);
        String gpt2 = LM.resolve("gpt2").toString();
        c = run("eval", "--model", gpt2, "--data", "tokens:" + file, "--seq-len", "7", "--dtype", "bf16");
        assertEquals("0", c[0], c[2]);
        g = onCuda("eval", "--model", gpt2, "--data", "tokens:" + file, "--seq-len", "7", "--dtype", "bf16");
        if (g != null) assertEquals(loss(c[1]), loss(g[1]), 1e-5 * Math.abs(loss(c[1])), "bf16 eval loss on CUDA vs the CPU: " + Arrays.toString(g));
    }

    private static double loss(String stdout) {
        String last = stdout.strip().lines().reduce((a, b) -> b).orElseThrow();
        return Double.parseDouble(last.substring("eval: loss ".length(), last.indexOf(',')));
    }
}
