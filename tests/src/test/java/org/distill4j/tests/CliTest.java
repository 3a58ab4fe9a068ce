package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.distill4j.cli.Main;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/** The command-line tool as a user meets it. */
class CliTest {
    private record Result(int exit, String out, String err) {}

    private static Result run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int exit = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new Result(exit, out.toString(), err.toString());
    }

    @Test
    void infoExitsZeroAndReportsEverything() {
        Result r = run("info");
        assertEquals(0, r.exit(), r.err());
        for (String part : List.of("java:", "native libraries:", "libcuda.so.1", "libcublas.so.13", "libcudnn.so.9", "libopenblas.so.0", "gpu:", "kernels:")) {
            assertTrue(r.out().contains(part), "info lacks '" + part + "':\n" + r.out());
        }
    }

    @Test
    void helpShowsAnExample() {
        Result r = run("info", "--help");
        assertEquals(0, r.exit());
        assertTrue(r.out().contains("Example"), r.out());
    }

    @Test
    void badUsageIsExitTwoWithOneLine() {
        Result r = run("no-such-command");
        assertEquals(2, r.exit());
        assertEquals(1, r.err().strip().lines().count(), r.err());
        assertFalse(r.err().contains("Exception"), r.err());
    }

    /**
     * The launcher's way: the named modules on the module path, native access granted to them only,
     * and not one JVM warning on stderr.
     */
    @Test
    void theCliRunsOnTheModulePathWithoutWarnings() throws Exception {
        // From Maven: tests/../cli/target; from the repository root (GPU machine): cli/target.
        Path cliTarget = System.getProperty("basedir") != null
            ? Path.of(System.getProperty("basedir"), "..", "cli", "target").normalize().toAbsolutePath()
            : Path.of("cli", "target").toAbsolutePath();
        Assumptions.assumeTrue(Files.isDirectory(cliTarget.resolve("lib")), "cli/target/lib not built yet");
        Assumptions.assumeTrue(ModuleLayer.boot().findModule("java.desktop").isPresent(), "this Java runtime has no java.desktop (the CLI module needs it)");
        List<String> modulePath = new ArrayList<>(), classPath = new ArrayList<>();
        try (Stream<Path> jars = Files.list(cliTarget)) {
            jars.filter(p -> p.getFileName().toString().matches("distill4j-cli-.*\\.jar")).forEach(p -> modulePath.add(p.toString()));
        }
        try (Stream<Path> jars = Files.list(cliTarget.resolve("lib"))) {
            jars.forEach(p -> (p.getFileName().toString().startsWith("openblas-") ? classPath : modulePath).add(p.toString()));
        }
        Path java = Path.of(System.getProperty("java.home"), "bin", "java");
        Process p = new ProcessBuilder(java.toString(), "--enable-native-access=org.distill4j.bindings,org.distill4j.core",
            "-p", String.join(":", modulePath), "-cp", String.join(":", classPath), "-m", "org.distill4j.cli/org.distill4j.cli.Main", "info").start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), err);
        assertTrue(out.contains("native libraries:"), out);
        assertEquals("", err.strip(), "stderr should be empty");
    }
}
