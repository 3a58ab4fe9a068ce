package org.distill4j.core.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.stream.Stream;
import org.distill4j.core.TestFiles;
import org.distill4j.core.tok.Tokenizer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Token files (llm.c .bin, .npy) written by {@link TokenFile.Writer} and read back as {@link TokenWindows}; bad files are one line. */
class TokenWindowsTest {
    @TempDir Path dir;

    /** ids 0, 1, ..., n-1 scaled into the vocabulary: id(i) = (i * 7919) % vocab. */
    private Path write(String name, int n, int vocab) throws IOException {
        Path p = dir.resolve(name);
        try (TokenFile.Writer w = new TokenFile.Writer(p, vocab)) {
            for (int i = 0; i < n; i++) w.write((int) ((i * 7919L) % vocab));
            w.commit();
        }
        return p;
    }

    @Test
    void llmcBinVersion1IsLlmcsLayout() throws IOException {
        Path p = write("t.bin", 103, 50257);
        byte[] bytes = Files.readAllBytes(p);
        ByteBuffer le = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        assertEquals(1024 + 2 * 103, bytes.length);
        assertEquals(20240520, le.getInt(0));
        assertEquals(1, le.getInt(4));
        assertEquals(103, le.getInt(8));
        for (int i = 3; i < 256; i++) assertEquals(0, le.getInt(4 * i));
        assertEquals((5 * 7919) % 50257, Short.toUnsignedInt(le.getShort(1024 + 2 * 5)));
    }

    @Test
    void wideVocabulariesWriteVersion2AndInt32() throws IOException {
        TokenFile bin = TokenFile.open(write("w.bin", 50, 151_936));
        assertEquals(TokenFile.Element.UINT32, bin.element());
        assertEquals(2, ByteBuffer.wrap(Files.readAllBytes(bin.path())).order(ByteOrder.LITTLE_ENDIAN).getInt(4));
        TokenFile npy = TokenFile.open(write("w.npy", 50, 151_936));
        assertEquals(TokenFile.Element.INT32, npy.element());
        assertTrue(new String(Files.readAllBytes(npy.path()), 0, 128, StandardCharsets.ISO_8859_1).contains("'shape': (50,)"));
        assertEquals(0, Files.size(npy.path()) % 2);
        assertEquals(TokenFile.Element.UINT16, TokenFile.open(write("n.npy", 50, 65_536)).element());
    }

    @Test
    void windowsAreTPlusOneTokensEveryT() throws IOException {
        for (String name : new String[] {"a.bin", "a.npy", "b.bin"}) {
            int vocab = name.startsWith("b") ? 100_000 : 50257;
            Path p = write(name, 103, vocab);
            try (TokenWindows w = TokenWindows.open(p, 10, vocab)) {
                assertEquals(103, w.tokens());
                assertEquals(10, w.windows());     // (103 - 1) / 10; tokens 100..102 are a partial window, dropped
                long[] in = new long[30], tg = new long[30];
                long[] order = {3, 0, 9};
                assertEquals(3, w.batch(order, 0, 3, in, tg));
                for (int r = 0; r < 3; r++) {
                    for (int t = 0; t < 10; t++) {
                        long pos = order[r] * 10 + t;
                        assertEquals((pos * 7919) % vocab, in[r * 10 + t], name + " input " + r + "," + t);
                        assertEquals(((pos + 1) * 7919) % vocab, tg[r * 10 + t], name + " target " + r + "," + t);
                    }
                }
                assertEquals(4, w.batchesPerEpoch(3, false));
                assertEquals(3, w.batchesPerEpoch(3, true));
                long[] order0 = w.order(0, 42, true), again = w.order(0, 42, true), order1 = w.order(1, 42, true);
                assertArrayEquals(order0, again);
                assertFalse(Arrays.equals(order0, order1));
                assertArrayEquals(new long[] {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, Arrays.stream(order0).sorted().toArray());
                assertArrayEquals(new long[] {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, w.order(0, 42, false));
                assertEquals(1, w.batch(order0, 3, 3, in, tg)); // the last, partial batch
            }
        }
    }

    /** A .npy numpy would write: np.array(ids, dtype).tofile after np.lib.format's header. */
    private Path npy(String name, String descr, long[] ids, int bytes) throws IOException {
        String dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + ids.length + ",), }";
        StringBuilder h = new StringBuilder(dict);
        while ((10 + h.length() + 1) % 64 != 0) h.append(' ');
        h.append('\n');
        ByteBuffer b = ByteBuffer.allocate(10 + h.length() + ids.length * bytes).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0}).putShort((short) h.length()).put(h.toString().getBytes(StandardCharsets.ISO_8859_1));
        for (long id : ids) {
            switch (bytes) {
                case 2 -> b.putShort((short) id);
                case 4 -> b.putInt((int) id);
                default -> b.putLong(id);
            }
        }
        Path p = dir.resolve(name);
        Files.write(p, b.array());
        return p;
    }

    @Test
    void readsEveryNpyIntegerType() throws IOException {
        long[] ids = {5, 40000, 7, 65535, 1, 2, 3};
        for (var c : new Object[][] {{"<u2", 2}, {"<i4", 4}, {"<u4", 4}, {"<i8", 8}}) {
            try (TokenWindows w = TokenWindows.open(npy("x" + c[1] + c[0].toString().charAt(1) + ".npy", (String) c[0], ids, (int) c[1]), 3, 65536)) {
                long[] in = new long[3], tg = new long[3];
                w.window(1, in, tg, 0);
                assertArrayEquals(new long[] {65535, 1, 2}, in, c[0].toString());
                assertArrayEquals(new long[] {1, 2, 3}, tg, c[0].toString());
            }
        }
        long[] small = {5, 400, 7, 30000};
        try (TokenWindows w = TokenWindows.open(npy("i2.npy", "<i2", small, 2), 3, 0)) {
            assertEquals(30000, w.token(3));
        }
    }

    private String fails(Path p, int seqLen, int vocab) {
        var e = assertThrows(IllegalArgumentException.class, () -> TokenWindows.open(p, seqLen, vocab).close());
        assertEquals(1, e.getMessage().lines().count(), e.getMessage());
        assertTrue(e.getMessage().contains(p.toString()), e.getMessage());
        return e.getMessage();
    }

    @Test
    void badFilesAreOneLineNamingTheFile() throws IOException {
        Path good = write("g.bin", 100, 50257);
        byte[] bytes = Files.readAllBytes(good);

        Path magic = dir.resolve("magic.bin");
        byte[] m = bytes.clone();
        m[0] = 1;
        Files.write(magic, m);
        assertTrue(fails(magic, 8, 0).contains("neither an llm.c token file"));

        Path version = dir.resolve("version.bin");
        byte[] v = bytes.clone();
        v[4] = 7;
        Files.write(version, v);
        assertTrue(fails(version, 8, 0).contains("version 7"));

        Path odd = dir.resolve("odd.bin");
        Files.write(odd, Arrays.copyOf(bytes, bytes.length + 1));
        assertTrue(fails(odd, 8, 0).contains("not a whole number of 2-byte tokens"));

        Path truncated = dir.resolve("truncated.bin");
        Files.write(truncated, Arrays.copyOf(bytes, bytes.length - 2));
        assertTrue(fails(truncated, 8, 0).contains("header count 100"));

        Path shortNpy = dir.resolve("short.npy");
        byte[] n = Files.readAllBytes(write("n.npy", 100, 50257));
        Files.write(shortNpy, Arrays.copyOf(n, n.length - 1));
        assertTrue(fails(shortNpy, 8, 0).contains("needs 200 data bytes"));

        assertTrue(fails(npy("f.npy", "<f4", new long[] {1, 2}, 4), 1, 0).contains("dtype '<f4'"));
        assertTrue(fails(write("few.bin", 8, 50257), 8, 0).contains("make no window"));
        assertTrue(fails(write("vocab.bin", 100, 50257), 8, 1000).contains("outside the model's vocabulary [0, 1000)"));
        assertTrue(fails(npy("neg.npy", "<i8", new long[] {1, -3, 2}, 8), 1, 50).contains("id -3 at position 1"));
        assertTrue(fails(dir.resolve("none.bin"), 8, 0).contains("no such file"));
    }

    /** Mutated headers and lengths: every file either opens or is refused with an IllegalArgumentException, nothing else. */
    @Test
    void mutatedFilesAreRefusedCleanly() throws IOException {
        long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
        System.out.println("TokenWindowsTest.mutatedFilesAreRefusedCleanly seed " + seed + " (-Ddistill4j.test.seed=" + seed + " replays it)");
        java.util.Random random = new java.util.Random(seed);
        byte[][] goods = {Files.readAllBytes(write("fz.bin", 40, 50257)), Files.readAllBytes(write("fz.npy", 40, 50257)),
            Files.readAllBytes(write("fzw.bin", 40, 100_000)), Files.readAllBytes(write("fzw.npy", 40, 100_000))};
        Path p = dir.resolve("mutant");
        int opened = 0, refused = 0;
        for (int trial = 0; trial < 2000; trial++) {
            byte[] b = goods[random.nextInt(goods.length)].clone();
            int header = b[0] == (byte) 0x93 ? 128 : 1024;
            switch (random.nextInt(3)) {
                case 0 -> b[random.nextInt(Math.min(header, 16))] ^= (byte) (1 << random.nextInt(8));  // magic, version, count, header length
                case 1 -> b[random.nextInt(header)] = (byte) random.nextInt(256);                      // anywhere in the header
                default -> b = Arrays.copyOf(b, random.nextInt(b.length + 8));                         // truncated or extended
            }
            Files.write(p, b);
            try (TokenWindows w = TokenWindows.open(p, 1 + random.nextInt(8), random.nextBoolean() ? 50257 : 0)) {
                for (long i = 0; i < w.tokens(); i++) w.token(i);
                opened++;
            } catch (IllegalArgumentException e) {
                assertEquals(1, e.getMessage().lines().count(), "seed " + seed + ": " + e.getMessage());
                refused++;
            } catch (RuntimeException e) {
                throw new AssertionError("seed " + seed + " trial " + trial + ": " + e, e);
            }
        }
        assertTrue(opened > 0 && refused > 0, "seed " + seed + ": opened " + opened + ", refused " + refused);
    }

    @Test
    void writerLeavesNothingBehindWithoutCommit() throws IOException {
        Path p = dir.resolve("never.bin");
        try (TokenFile.Writer w = new TokenFile.Writer(p, 50257)) {
            w.write(new int[] {1, 2, 3});
            assertThrows(IllegalArgumentException.class, () -> w.write(70000)); // does not fit uint16
        }
        try (Stream<Path> left = Files.list(dir)) {
            assertEquals(0, left.count(), "no file and no temporary file left");
        }
        assertThrows(IllegalArgumentException.class, () -> new TokenFile.Writer(dir.resolve("x.txt"), 10));
    }

    @Test
    void textDataIsTokenisedOnceAndCachedBesideTheText() throws IOException {
        Path a = dir.resolve("a.txt"), b = dir.resolve("b.txt");
        Files.writeString(a, "Call me Ishmael.\r\n");
        Files.writeString(b, "Some years ago");
        try (Tokenizer tok = Tokenizer.open(TestFiles.resource("/fixtures/tok/gpt2/tokenizer.json"))) {
            Path cache = TextTokens.cache(List.of(a, b), tok);
            assertTrue(cache.getFileName().toString().matches("a\\.txt\\.[0-9a-f]{16}\\.tokens\\.bin"), cache.toString());
            var written = Files.getLastModifiedTime(cache);
            assertEquals(cache, TextTokens.cache(List.of(a, b), tok));
            assertEquals(written, Files.getLastModifiedTime(cache), "reused, not rewritten");
            int[] ea = tok.encode(Files.readString(a)), eb = tok.encode(Files.readString(b));
            try (TokenWindows w = TextTokens.open("text:" + a + "," + b, tok, 1, tok.vocabSize())) {
                assertEquals(ea.length + eb.length + 2, w.tokens());
                assertEquals(ea[0], w.token(0));
                assertEquals(50256, w.token(ea.length));
                assertEquals(eb[0], w.token(ea.length + 1));
                assertEquals(50256, w.token(w.tokens() - 1));
            }
            Files.writeString(b, "Some years ago.");
            assertNotEquals(cache, TextTokens.cache(List.of(a, b), tok), "a changed text gets a new cache file");
            var noTok = assertThrows(IllegalArgumentException.class, () -> TextTokens.open("text:" + a, null, 8, 0));
            assertTrue(noTok.getMessage().contains("needs --tokenizer"), noTok.getMessage());
        }
    }

    @Test
    void dataSpecParsesTokensAndRefusesThemForClassifiers() throws IOException {
        Path p = write("d.bin", 100, 50257);
        try (TokenWindows w = DataSpec.openTokens("tokens:" + p, 16, 50257)) {
            assertEquals(6, w.windows());
        }
        var noSeqLen = assertThrows(IllegalArgumentException.class, () -> DataSpec.openTokens("tokens:" + p, null, 50257));
        assertTrue(noSeqLen.getMessage().contains("needs --seq-len"), noSeqLen.getMessage());
        var classifier = assertThrows(IllegalArgumentException.class, () -> DataSpec.open("tokens:" + p));
        assertTrue(classifier.getMessage().contains("needs a decoder model"), classifier.getMessage());
        assertTrue(DataSpec.isTokens("tokens:x.bin"));
        assertNotEquals(true, DataSpec.isTokens("npy:x.npy,y.npy"));
    }
}
