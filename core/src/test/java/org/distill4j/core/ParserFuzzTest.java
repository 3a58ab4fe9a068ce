package org.distill4j.core;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.distill4j.core.data.ByteImageDataset;
import org.distill4j.core.io.Npy;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.nn.ModelSpec;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Thousands of mutated files for each parser: every outcome must be a successful parse or an
 * IllegalArgumentException (one clear line for the CLI); any other exception is a bug.
 */
class ParserFuzzTest {
    @TempDir
    Path tmp;

    /** Fresh inputs every run; the seed is in every failure message, and -Ddistill4j.test.seed=N replays one. */
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);

    ParserFuzzTest() {
        System.out.println("ParserFuzzTest random seed " + seed + " (-Ddistill4j.test.seed=" + seed + " replays it)");
    }

    private interface Parser { void parse(Path file) throws Exception; }

    private byte[] mutate(byte[] original) {
        byte[] b = original.clone();
        switch (random.nextInt(5)) {
            case 0 -> { for (int k = 0; k < 1 + random.nextInt(4); k++) b[random.nextInt(b.length)] ^= (byte) (1 << random.nextInt(8)); }
            case 1 -> b = java.util.Arrays.copyOf(b, random.nextInt(b.length + 1));
            case 2 -> { int at = random.nextInt(b.length); b[at] = (byte) random.nextInt(256); }
            case 3 -> {
                int at = random.nextInt(b.length + 1);
                byte[] c = new byte[b.length + 1 + random.nextInt(8)];
                System.arraycopy(b, 0, c, 0, at);
                for (int i = at; i < at + c.length - b.length; i++) c[i] = (byte) random.nextInt(256);
                System.arraycopy(b, at, c, at + c.length - b.length, b.length - at);
                b = c;
            }
            default -> { // a small header field set to an extreme value
                int at = random.nextInt(Math.min(b.length, 24));
                for (int i = at; i < Math.min(b.length, at + 4); i++) b[i] = (byte) 0xff;
            }
        }
        return b;
    }

    /**
     * Mutations of a valid file either parse or give the clear error (IllegalArgumentException);
     * anything else fails. So that the test cannot pass by a parser that accepts nothing or
     * everything: the valid file parses, and some mutations (truncations at least) are refused.
     */
    private void fuzz(String what, byte[] valid, int rounds, Parser parser) throws Exception {
        Path f = tmp.resolve(what);
        Files.write(f, valid);
        parser.parse(f);
        int refused = 0;
        for (int i = 0; i < rounds; i++) {
            Files.write(f, mutate(valid));
            try {
                parser.parse(f);
            } catch (IllegalArgumentException expected) {
                refused++; // the clear error every malformed file must give
            } catch (Throwable t) {
                fail(what + " round " + i + " (seed " + seed + "): " + t, t);
            }
        }
        System.out.printf("ParserFuzzTest %s: %d of %d mutations refused with a clear error, the rest parsed%n", what, refused, rounds);
        assertTrue(refused > 0, what + ": " + refused + " of " + rounds + " mutations refused (seed " + seed + ")");
    }

    @Test
    void npy() throws Exception {
        Path good = tmp.resolve("good.npy");
        Npy.writeFloats(good, new float[] {1, 2, 3, 4, 5, 6}, 2, 3);
        fuzz("npy", Files.readAllBytes(good), 3000, f -> Npy.read(f).toFloats());
    }

    @Test
    void safetensors() throws Exception {
        byte[] good = Files.readAllBytes(TestFiles.resource("/fixtures/model/cnn.safetensors"));
        fuzz("st", good, 3000, f -> {
            try (Safetensors s = Safetensors.open(f)) {
                for (var e : s.entries().values()) s.bytes(e).byteSize();
            }
        });
    }

    @Test
    void idxImagesAndLabels() throws Exception {
        Path[] good = TestFiles.writeIdx(tmp, 20);
        byte[] images = Files.readAllBytes(good[0]), labels = Files.readAllBytes(good[1]);
        fuzz("idx-images", images, 2000, f -> ByteImageDataset.idx(f, good[1]).close());
        fuzz("idx-labels", labels, 2000, f -> ByteImageDataset.idx(good[0], f).close());
    }

    @Test
    void cifar() throws Exception {
        byte[] rec = new byte[3 * 3073];
        fuzz("cifar", rec, 1000, f -> ByteImageDataset.cifar10(java.util.List.of(f)).close());
    }

    @Test
    void modelSpecs() throws Exception {
        byte[] good = Files.readAllBytes(TestFiles.resource("/fixtures/model/cnn.json"));
        fuzz("spec.json", good, 3000, f -> {
            try (var m = ModelSpec.read(f).build(org.distill4j.core.cpu.CpuBackend.get(), 0)) {
                m.parameterCount();
            }
        });
    }
}
