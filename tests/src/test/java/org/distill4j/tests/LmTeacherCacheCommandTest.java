package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.distill4j.cli.Main;
import org.distill4j.core.io.Npy;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code distill distill --teacher DIR --teacher-cache file:PATH} for decoders on the tiny GPT-2
 * fixture (vocabulary 128): the log line, reuse on the second run, the default k, and the refusals
 * (reverse KL with a top-k cache, --hint with a cache, --teacher-cache-topk alone, a file that is
 * not a cache) as one line with exit code 2.
 */
class LmTeacherCacheCommandTest {
    @TempDir
    Path tmp;

    private static final Path GPT2 = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/lm/gpt2").normalize();

    private static String[] run(List<String> args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args.toArray(String[]::new), new PrintWriter(out, true), new PrintWriter(err, true));
        return new String[] {String.valueOf(exit), out.toString(), err.toString()};
    }

    private List<String> distill(Path data, String out, String... more) {
        List<String> a = new java.util.ArrayList<>(List.of("distill", "--teacher", GPT2.toString(), "--student-init", "teacher-layers:1", "--data",
            "tokens:" + data, "--seq-len", "8", "--batch", "2", "--epochs", "1", "--out", tmp.resolve(out).toString()));
        a.addAll(List.of(more));
        return a;
    }

    private Path tokens() throws Exception {
        long[] ids = new long[6 * 8 + 1];
        Random r = new Random(3);
        for (int i = 0; i < ids.length; i++) ids[i] = r.nextInt(128);
        Path p = tmp.resolve("tokens.npy");
        Npy.writeLongs(p, ids, ids.length);
        return p;
    }

    @Test
    void cacheIsComputedThenReused() throws Exception {
        Path data = tokens(), cache = tmp.resolve("cache/teacher.safetensors");
        String[] first = run(distill(data, "a", "--teacher-cache", "file:" + cache, "--teacher-cache-topk", "5", "--teacher-cache-dtype", "bf16"));
        assertEquals("0", first[0], first[1] + first[2]);
        assertTrue(first[1].contains("teacher cache: top-5 of 128 classes, bf16 values + int32 ids, 30 bytes a token, 48 tokens"), first[1]);
        assertTrue(first[1].contains("computed in"), first[1]);
        assertTrue(Files.isRegularFile(cache));
        String[] second = run(distill(data, "b", "--teacher-cache", "file:" + cache, "--teacher-cache-topk", "5", "--teacher-cache-dtype", "bf16"));
        assertEquals("0", second[0], second[1] + second[2]);
        assertTrue(second[1].contains("reused (fingerprint matches)"), second[1]);
        // Same cache, same seed: the same student, bit for bit.
        assertEquals(-1, Files.mismatch(tmp.resolve("a/model.safetensors"), tmp.resolve("b/model.safetensors")));
        // 128 ids (<= 4096): every class by default, in memory with `device`.
        String[] full = run(distill(data, "c", "--teacher-cache", "device"));
        assertEquals("0", full[0], full[1] + full[2]);
        assertTrue(full[1].contains("teacher cache: every class (128), f32 values, 512 bytes a token, 48 tokens, 0.0 MiB in memory; computed"), full[1]);
    }

    @Test
    void refusalsAreOneLine() throws Exception {
        Path data = tokens(), notACache = tmp.resolve("notes.txt");
        Files.writeString(notACache, "not a cache");
        List<List<String>> bad = List.of(
            distill(data, "x", "--teacher-cache", "file:" + tmp.resolve("c.safetensors"), "--teacher-cache-topk", "5", "--divergence", "reverse-kl"),
            distill(data, "x", "--teacher-cache", "file:" + tmp.resolve("c.safetensors"), "--hint", "1:1"),
            distill(data, "x", "--teacher-cache-topk", "5"),
            distill(data, "x", "--teacher-cache", "file:" + tmp.resolve("c.safetensors"), "--teacher-cache-topk", "129"),
            distill(data, "x", "--teacher-cache", "file:" + notACache),
            distill(data, "x", "--teacher-cache", "file:" + tmp));
        List<String> expected = List.of("a top-k teacher needs --divergence kl", "use one or the other", "--teacher-cache-topk needs --teacher-cache",
            "the models share 128 ids", "not a Distill4J decoder teacher cache", "is a folder; name a file");
        for (int i = 0; i < bad.size(); i++) {
            String[] r = run(bad.get(i));
            assertEquals("2", r[0], bad.get(i) + ": " + r[1] + r[2]);
            assertTrue(r[2].contains(expected.get(i)), r[2]);
            assertEquals(1, r[2].strip().lines().count(), r[2]);
        }
        assertEquals("not a cache", Files.readString(notACache), "the file is left as it was");
        assertFalse(Files.exists(tmp.resolve("c.safetensors")));
    }
}
