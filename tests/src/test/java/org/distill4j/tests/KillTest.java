package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.distill4j.core.data.ArrayDataset;
import org.distill4j.core.data.Synthetic;
import org.distill4j.core.io.Npy;
import org.distill4j.core.io.Safetensors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Fault test: a training process killed with SIGKILL at random moments (while it writes a
 * checkpoint every step) always leaves loadable checkpoints behind, and --resume finishes the run.
 */
class KillTest {
    @TempDir
    Path tmp;

    @Test
    void sigkillNeverLeavesAnUnloadableCheckpoint() throws Exception {
        ArrayDataset d = Synthetic.task(3, 64, 10, 2, 2f, 1f).sample(4000, 1, 0f);
        float[] x = new float[4000 * 64];
        long[] y = new long[4000];
        try (var arena = java.lang.foreign.Arena.ofConfined()) {
            var seg = arena.allocate(64 * 4L);
            for (int i = 0; i < 4000; i++) {
                d.sample(i, seg, 0);
                for (int j = 0; j < 64; j++) x[i * 64 + j] = seg.getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, j);
                y[i] = d.label(i);
            }
        }
        Npy.writeFloats(tmp.resolve("x.npy"), x, 4000, 64);
        Npy.writeLongs(tmp.resolve("y.npy"), y, 4000);
        Path spec = tmp.resolve("m.json");
        Files.writeString(spec, "{\"input\": [64], \"layers\": [{\"type\": \"linear\", \"in\": 64, \"out\": 1024}, {\"type\": \"relu\"},"
            + "{\"type\": \"linear\", \"in\": 1024, \"out\": 1024}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"in\": 1024, \"out\": 10}]}");
        String data = "npy:" + tmp.resolve("x.npy") + "," + tmp.resolve("y.npy");
        Path out = tmp.resolve("run"), ckpt = out.resolve("checkpoints");
        List<String> cmd = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(), "--enable-native-access=ALL-UNNAMED",
            "-cp", classPath(), "org.distill4j.cli.Main", "train", "--model", spec.toString(), "--data", data, "--test-data", data,
            "--epochs", "4", "--batch", "64", "--checkpoint-every", "1", "--keep", "3", "--out", out.toString(), "--resume"));
        Random r = new Random(TestSeeds.seed(KillTest.class));  // when each kill lands
        int kills = 0;
        for (int round = 0; round < 8; round++) {
            Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(tmp.resolve("log-" + round).toFile()).start();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (p.isAlive() && !hasCheckpoint(ckpt) && System.nanoTime() < deadline) Thread.sleep(20);
            Thread.sleep(50 + r.nextInt(400));
            if (!p.isAlive()) {
                assertEquals(0, p.exitValue(), Files.readString(tmp.resolve("log-" + round)));
                break;
            }
            p.destroyForcibly(); // SIGKILL on Linux
            assertTrue(p.waitFor(30, TimeUnit.SECONDS));
            kills++;
            for (Path c : checkpoints(ckpt)) {
                try (Safetensors st = Safetensors.open(c)) {
                    assertTrue(st.entries().containsKey("model.0.weight"), c + " is missing tensors");
                    assertTrue(st.metadata().containsKey("step"), c + " has no position");
                }
            }
        }
        assertTrue(kills >= 1, "the process finished before it could be killed");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(tmp.resolve("log-final").toFile()).start();
        assertTrue(p.waitFor(300, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), Files.readString(tmp.resolve("log-final")));
        assertTrue(Files.readString(tmp.resolve("log-final")).contains("done: 252 steps"), Files.readString(tmp.resolve("log-final")));
        assertTrue(Files.exists(out.resolve("model.safetensors")));
        try (var s = Files.list(ckpt)) {
            assertFalse(s.anyMatch(f -> f.getFileName().toString().endsWith(".tmp")), "stale temporary files are cleaned up");
        }
    }

    /** The class path the child needs: Maven's, or the console launcher's class loader URLs (GPU machine). */
    private static String classPath() throws Exception {
        String cp = System.getProperty("java.class.path");
        if (org.distill4j.cli.Main.class.getClassLoader() instanceof java.net.URLClassLoader u) {
            StringBuilder b = new StringBuilder();
            for (java.net.URL url : u.getURLs()) b.append(Path.of(url.toURI())).append(java.io.File.pathSeparator);
            cp = b + cp;
        }
        return cp;
    }

    private static boolean hasCheckpoint(Path dir) throws Exception {
        return !checkpoints(dir).isEmpty();
    }

    private static List<Path> checkpoints(Path dir) throws Exception {
        if (!Files.isDirectory(dir)) return List.of();
        try (var s = Files.list(dir)) {
            return s.filter(f -> f.getFileName().toString().matches("checkpoint-\\d+\\.safetensors")).toList();
        }
    }
}
