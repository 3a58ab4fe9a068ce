package org.distill4j.bindings;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/** Test helper: the include folders bindings/gen/find-headers.sh finds, and gcc. */
final class Headers {
    private Headers() {}

    /** The bindings module's folder: Maven's basedir, or ./bindings when run from the repository root (GPU machine). */
    static Path moduleDir() {
        String basedir = System.getProperty("basedir");
        if (basedir != null) return Path.of(basedir).toAbsolutePath();
        Path fromRoot = Path.of("bindings").toAbsolutePath();
        return Files.isDirectory(fromRoot.resolve("gen")) ? fromRoot : Path.of(".").toAbsolutePath();
    }

    /** Every header a binding class is generated from (bindings/gen/*.spec), as find-headers.sh looks for them. */
    static final List<String> ALL = List.of("cuda.h", "cublas_v2.h", "cublasLt.h", "cudnn.h", "cblas.h", "oneapi/dnnl/dnnl.h", "omp.h",
        "distill4j_cpu.h");

    /** header file name -> folder holding it, for the headers that are present on this machine. */
    static Map<String, Path> find() throws IOException, InterruptedException {
        Process p = new ProcessBuilder("bash", moduleDir().resolve("gen/find-headers.sh").toString()).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(60, TimeUnit.SECONDS) || p.exitValue() != 0) throw new IOException("find-headers.sh failed: " + out);
        Map<String, Path> found = new LinkedHashMap<>();
        for (String line : out.split("\n")) {
            if (line.isBlank()) continue;
            Path dir = Path.of(line.trim());
            for (String h : ALL) {
                if (!found.containsKey(h) && Files.isRegularFile(dir.resolve(h))) found.put(h, dir);
            }
        }
        return found;
    }

    static boolean haveGcc() {
        try {
            Process p = new ProcessBuilder("gcc", "--version").redirectErrorStream(true).start();
            p.getInputStream().readAllBytes();
            return p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0;
        } catch (IOException | InterruptedException e) {
            return false;
        }
    }

    /** Result of one gcc run: exit code and everything it printed. */
    record Gcc(int exit, String output) {}

    static Gcc gcc(Path source, Path object, List<Path> includes, String... flags) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(List.of("gcc", "-std=c11", "-Wall", "-Werror", "-Wno-deprecated-declarations", "-c",
            source.toString(), "-o", object.toString()));
        cmd.addAll(List.of(flags));
        for (Path i : includes) cmd.add("-I" + i);
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        p.waitFor(300, TimeUnit.SECONDS);
        return new Gcc(p.exitValue(), out);
    }
}
