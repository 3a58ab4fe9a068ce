package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.distill4j.cli.Main;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.io.Npy;
import org.distill4j.core.io.Safetensors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code distill predict --model DIR} and {@code distill info --model DIR} on the Hugging Face decoder fixtures (fixtures/lm). */
class DecoderCommandTest {
    @TempDir
    Path tmp;

    private static final Path LM = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/lm").normalize();

    private static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    private static float[] reference(Path dir, String name, DType dtype, long[][] shapeOut) throws Exception {
        try (Safetensors st = Safetensors.open(dir.resolve("reference.safetensors"));
             Tensor t = CpuBackend.get().empty(dtype, st.entries().get(name).shape())) {
            st.copyInto(name, t);
            shapeOut[0] = t.shape();
            if (dtype == DType.I64) {
                long[] l = t.toLongArray();
                float[] f = new float[l.length];
                for (int i = 0; i < l.length; i++) f[i] = l[i];
                return f;
            }
            return t.toFloatArray();
        }
    }

    /** Token ids of the fixture as int32 and int64 .npy: logits within 1e-4 of transformers' (relative to each row's max |logit|). */
    @Test
    void predictReproducesTransformersLogits() throws Exception {
        for (String model : new String[] {"gpt2", "qwen3", "llama-sharded"}) {
            Path dir = LM.resolve(model);
            long[][] shape = new long[1][];
            float[] ids = reference(dir, "input_ids", DType.I64, shape);
            long[] idShape = shape[0];
            float[] want = reference(dir, "logits", DType.F32, shape);
            long[] longs = new long[ids.length];
            for (int i = 0; i < ids.length; i++) longs[i] = (long) ids[i];
            Path in64 = tmp.resolve(model + "-ids64.npy"), in32 = tmp.resolve(model + "-ids32.npy");
            Npy.writeLongs(in64, longs, idShape);
            Files.write(in32, int32Npy(longs, idShape));
            for (Path in : new Path[] {in64, in32}) {
                Path out = tmp.resolve(model + "-" + in.getFileName());
                String[] r = run("predict", "--model", dir.toString(), "--input", in.toString(), "--output", out.toString(), "--batch", "1");
                assertEquals("0", r[0], r[2]);
                Npy.Array got = Npy.read(out);
                assertArrayEquals(shape[0], got.shape());
                assertRowsClose(got.toFloats(), want, (int) shape[0][2], 1e-4, model);
            }
        }
    }

    /**
     * {@code --dtype bf16} (and stored, for the bf16 checkpoint, where oneDNN multiplies bf16): the logits of PyTorch's bf16 recipe
     * (make_lm_bf16_fixtures.py) within 1e-5 of a row's max |logit|; --dtype f32 stays on transformers' float32 logits; a bad value is one line.
     */
    @Test
    void predictInBf16ReproducesThePyTorchBf16Recipe() throws Exception {
        Path dir = LM.resolve("llama-tied-rope3-bf16");
        long[][] shape = new long[1][];
        float[] ids = reference(dir, "input_ids", DType.I64, shape);
        long[] idShape = shape[0], longs = new long[ids.length];
        for (int i = 0; i < ids.length; i++) longs[i] = (long) ids[i];
        float[] f32 = reference(dir, "logits", DType.F32, shape), bf16;
        try (Safetensors st = Safetensors.open(dir.resolve("bf16-compute.safetensors")); Tensor t = CpuBackend.get().empty(DType.F32, st.entries().get("logits").shape())) {
            st.copyInto("logits", t);
            bf16 = t.toFloatArray();
        }
        Path in = tmp.resolve("ids.npy");
        Npy.writeLongs(in, longs, idShape);
        String[][] cases = {{"bf16", "bf16"}, {"f32", "f32"}, {"stored", org.distill4j.core.cpu.CpuBlas.hasFastBf16() ? "bf16" : "f32"}};
        for (String[] c : cases) {
            Path out = tmp.resolve("out-" + c[0] + ".npy");
            String[] r = run("predict", "--model", dir.toString(), "--input", in.toString(), "--output", out.toString(), "--dtype", c[0]);
            assertEquals("0", r[0], r[2]);
            boolean inBf16 = c[1].equals("bf16");
            assertRowsClose(Npy.read(out).toFloats(), inBf16 ? bf16 : f32, (int) shape[0][2], inBf16 ? 1e-5 : 1e-4, "--dtype " + c[0]);
        }
        String[] r = run("predict", "--model", dir.toString(), "--input", in.toString(), "--output", tmp.resolve("bad.npy").toString(), "--dtype", "fp8");
        assertEquals("2", r[0], r[2]);
        assertEquals(1, r[2].strip().lines().count(), r[2]);
        assertTrue(r[2].contains("--dtype must be stored, f32 or bf16, got 'fp8'"), r[2]);
        assertFalse(Files.exists(tmp.resolve("bad.npy")));
    }

    /** Every row of V logits within tol of the reference's, relative to the reference row's max |logit|. */
    private static void assertRowsClose(float[] got, float[] want, int v, double tol, String what) {
        for (int row = 0; row < got.length / v; row++) {
            double scale = 0, diff = 0;
            for (int k = 0; k < v; k++) {
                scale = Math.max(scale, Math.abs(want[row * v + k]));
                diff = Math.max(diff, Math.abs(got[row * v + k] - want[row * v + k]));
            }
            assertTrue(diff <= tol * scale, what + " row " + row + ": " + diff + " vs max |logit| " + scale);
        }
    }

    /** A minimal .npy of int32 (Npy writes int64 and float32 only). */
    private static byte[] int32Npy(long[] values, long[] shape) {
        String header = "{'descr': '<i4', 'fortran_order': False, 'shape': (" + shape[0] + ", " + shape[1] + "), }";
        int total = 10 + header.length() + 1;
        int pad = (64 - total % 64) % 64;
        StringBuilder h = new StringBuilder(header);
        h.append(" ".repeat(pad)).append('\n');
        java.nio.ByteBuffer buf = java.nio.ByteBuffer.allocate(10 + h.length() + 4 * values.length).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        buf.put(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0});
        buf.putShort((short) h.length());
        buf.put(h.toString().getBytes(java.nio.charset.StandardCharsets.US_ASCII));
        for (long v : values) buf.putInt((int) v);
        return buf.array();
    }

    @Test
    void infoDescribesTheFolder() {
        String[] r = run("info", "--model", LM.resolve("llama-tied-rope3-bf16").toString());
        assertEquals("0", r[0], r[2]);
        for (String s : new String[] {"family: llama (tied lm_head)", "layers: 2", "heads: 4", "KV heads: 4", "vocabulary: 128", "context length: 64",
            "dtype on disk: BF16", "parameters: "}) {
            assertTrue(r[1].contains(s), s + " in " + r[1]);
        }
        String[] g = run("info", "--model", LM.resolve("gpt2-hub").toString());
        assertEquals("0", g[0], g[2]);
        assertTrue(g[1].contains("family: gpt2") && g[1].contains("vocabulary: 96"), g[1]);
    }

    /** Every bad input: exit 2, one line naming the problem, nothing written (no output, no temporary file). */
    @Test
    void badInputIsOneLineExitTwoAndNothingWritten() throws Exception {
        long[] ids = new long[2 * 8];
        Path ok = tmp.resolve("ids.npy"), outOfVocab = tmp.resolve("oov.npy"), tooLong = tmp.resolve("long.npy"), floats = tmp.resolve("f.npy");
        Path negative = tmp.resolve("negative.npy"), lastRowOov = tmp.resolve("oov-last-row.npy"), flat = tmp.resolve("flat.npy");
        Npy.writeLongs(ok, ids, 2, 8);
        long[] oov = ids.clone();
        oov[5] = 128; // gpt2's vocabulary is [0, 128)
        Npy.writeLongs(outOfVocab, oov, 2, 8);
        long[] neg = ids.clone();
        neg[9] = -1;
        Npy.writeLongs(negative, neg, 2, 8);
        long[] last = ids.clone();
        last[15] = 1000; // in the last row: with --batch 1 the first row's forward could run before it, but ids are checked first
        Npy.writeLongs(lastRowOov, last, 2, 8);
        Npy.writeLongs(flat, ids, 16);
        Npy.writeLongs(tooLong, new long[65], 1, 65); // gpt2's n_positions is 64
        Npy.writeFloats(floats, new float[16], 2, 8);
        Path bad = LM.resolve("bad"), made = tmp.resolve("made");
        Path headerCut = copyTruncated(bad.resolve("truncated"), made.resolve("header-cut"), 20); // inside the JSON header
        Path tiny = copyTruncated(bad.resolve("truncated"), made.resolve("tiny"), 5); // shorter than the 8-byte header length
        Path noConfig = copyWithConfig(bad.resolve("truncated"), made.resolve("no-config"), null);
        Path brokenJson = copyWithConfig(LM.resolve("llama-gqa"), made.resolve("broken-json"), "{\"model_type\": \"llama\", ");
        Path illTyped = copyWithConfig(LM.resolve("llama-gqa"), made.resolve("ill-typed"),
            Files.readString(LM.resolve("llama-gqa/config.json")).replace("\"num_attention_heads\": 4", "\"num_attention_heads\": \"four\""));
        String[][] cases = {
            {bad.resolve("unknown-model-type").toString(), ok.toString(), "model_type"},
            {bad.resolve("missing-key").toString(), ok.toString(), "num_attention_heads"},
            {illTyped.toString(), ok.toString(), "num_attention_heads"},
            {brokenJson.toString(), ok.toString(), "config.json"},
            {noConfig.toString(), ok.toString(), "config.json"},
            {bad.resolve("missing-shard").toString(), ok.toString(), "does not exist"},
            {bad.resolve("wrong-shape").toString(), ok.toString(), "k_proj.weight"},
            {bad.resolve("wrong-dtype").toString(), ok.toString(), "up_proj.weight"},
            {bad.resolve("truncated").toString(), ok.toString(), "model.safetensors"},
            {headerCut.toString(), ok.toString(), "model.safetensors"},
            {tiny.toString(), ok.toString(), "model.safetensors"},
            {bad.resolve("rope-yarn").toString(), ok.toString(), "rope_scaling.rope_type"},
            {bad.resolve("sliding-window-short").toString(), ok.toString(), "sliding_window"},
            {LM.resolve("gpt2").toString(), outOfVocab.toString(), "outside the vocabulary"},
            {LM.resolve("gpt2").toString(), negative.toString(), "outside the vocabulary"},
            {LM.resolve("gpt2").toString(), lastRowOov.toString(), "outside the vocabulary"},
            {LM.resolve("gpt2").toString(), tooLong.toString(), "n_positions"},
            {LM.resolve("gpt2").toString(), floats.toString(), "int32 or int64"},
            {LM.resolve("gpt2").toString(), flat.toString(), "[B, T]"},
        };
        Path outDir = tmp.resolve("out");
        Files.createDirectories(outDir);
        Path out = outDir.resolve("logits.npy");
        for (String[] c : cases) {
            String[] r = run("predict", "--model", c[0], "--input", c[1], "--output", out.toString(), "--batch", "1");
            String what = c[0] + " " + c[1];
            assertEquals("2", r[0], what + " -> " + r[2]);
            assertEquals(1, r[2].strip().lines().count(), what + ": " + r[2]);
            assertTrue(r[2].contains(c[2]), what + ": '" + c[2] + "' not in " + r[2]);
            assertFalse(r[2].contains("Exception") || r[2].contains("\tat "), r[2]);
            try (var left = Files.list(outDir)) {
                assertEquals(List.of(), left.toList(), what + ": nothing may be written, not even a temporary file");
            }
        }
        for (Path dir : new Path[] {bad.resolve("unknown-model-type"), bad.resolve("missing-key"), bad.resolve("missing-shard"), bad.resolve("truncated"),
            bad.resolve("rope-yarn"), headerCut, tiny, noConfig, brokenJson, illTyped}) {
            String[] r = run("info", "--model", dir.toString());
            assertEquals("2", r[0], dir + " -> " + r[2]);
            assertEquals(1, r[2].strip().lines().count(), r[2]);
            assertFalse(r[2].contains("Exception") || r[2].contains("\tat "), r[2]);
        }
    }

    /** A copy of a model folder whose model.safetensors keeps only its first {@code bytes} bytes. */
    private static Path copyTruncated(Path from, Path to, int bytes) throws Exception {
        Files.createDirectories(to);
        Files.copy(from.resolve("config.json"), to.resolve("config.json"));
        byte[] st = Files.readAllBytes(from.resolve("model.safetensors"));
        Files.write(to.resolve("model.safetensors"), java.util.Arrays.copyOf(st, bytes));
        return to;
    }

    /** A copy of a single-file model folder with config.json replaced by {@code config} (null: no config.json). */
    private static Path copyWithConfig(Path from, Path to, String config) throws Exception {
        Files.createDirectories(to);
        Files.copy(from.resolve("model.safetensors"), to.resolve("model.safetensors"));
        if (config != null) Files.writeString(to.resolve("config.json"), config);
        return to;
    }

    /**
     * {@code distill bench lm-kd-step} runs whole distillation steps on the fixture (as teacher and
     * student) and prints the rate, the peak RSS and, with --profile, every phase; the loss of the
     * first step is the same with the loss in chunks of 5 rows and in one piece (the chunking must
     * not change it). Bad options: exit 2, one line.
     */
    @Test
    void benchLmKdStepTimesWholeStepsAndChunkingKeepsTheLoss() {
        String gpt2 = LM.resolve("gpt2").toString();
        double[] losses = new double[2];
        String[] chunks = {"5", "0"};
        for (int i = 0; i < 2; i++) {
            String[] r = run("bench", "lm-kd-step", "--teacher", gpt2, "--student", gpt2, "--seq-len", "16", "--batch", "2", "--steps", "1", "--repeats", "1",
                "--warmup", "0", "--loss-chunk", chunks[i], "--profile");
            assertEquals("0", r[0], r[2]);
            var rate = java.util.regex.Pattern.compile("(?m)^lm-kd-step: ([0-9.]+) tokens/s$").matcher(r[1]);
            assertTrue(rate.find() && Double.parseDouble(rate.group(1)) > 0, r[1]);
            assertTrue(r[1].contains("peak RSS"), r[1]);
            for (String phase : new String[] {"teacher_forward", "student_forward", "loss_student_head_f", "loss_teacher_head_f", "loss_fused", "loss_head_b",
                "student_backward", "optimizer", "zero_grad", "other"}) {
                assertTrue(r[1].contains("  " + phase + " "), phase + " missing from:\n" + r[1]);
            }
            assertTrue(r[1].contains("loss chunk " + (i == 0 ? "5 rows (--loss-chunk)" : "32 rows (no chunking)")), r[1]);
            var loss = java.util.regex.Pattern.compile("; loss ([0-9.]+) \\(soft").matcher(r[1]);
            assertTrue(loss.find(), r[1]);
            losses[i] = Double.parseDouble(loss.group(1));
        }
        assertTrue(losses[0] > 0, "loss " + losses[0]);
        assertEquals(losses[0], losses[1], 1e-4, "chunked (5 rows) and unchunked losses of the first step");
        for (String[] bad : new String[][] {{"--loss-chunk", "-2"}, {"--optimizer", "lion"}, {"--seq-len", "65"}, {"--divergence", "hellinger"}}) {
            String[] args = new String[] {"bench", "lm-kd-step", "--teacher", gpt2, "--student", gpt2, "--batch", "1", "--steps", "1", "--repeats", "1",
                "--warmup", "0", "--seq-len", "8", bad[0], bad[1]};
            String[] r = run(args);
            assertEquals("2", r[0], String.join(" ", bad) + " -> " + r[1] + r[2]);
            assertEquals(1, r[2].strip().lines().count(), r[2]);
        }
    }
}
