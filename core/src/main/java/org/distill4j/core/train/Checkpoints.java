package org.distill4j.core.train;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * Where a run keeps its checkpoints: {@code dir/checkpoint-<step>.safetensors}, each written
 * atomically (temp file, fsync, rename), the newest {@code keep} kept.
 *
 * @param everySteps write one every this many optimizer steps (and at the end of the run)
 * @param resume     continue from the newest checkpoint in {@code dir}, if there is one
 */
public record Checkpoints(Path dir, int everySteps, int keep, boolean resume) {
    private static final Pattern NAME = Pattern.compile("checkpoint-(\\d+)\\.safetensors");

    public Checkpoints {
        if (everySteps < 1) throw new IllegalArgumentException("checkpoint interval must be >= 1 step, got " + everySteps);
        if (keep < 1) throw new IllegalArgumentException("checkpoints to keep must be >= 1, got " + keep);
    }

    public Path file(long step) {
        return dir.resolve("checkpoint-" + step + ".safetensors");
    }

    /** The newest checkpoint, if any. */
    public Optional<Path> latest() throws IOException {
        return all().stream().reduce((a, b) -> b);
    }

    /** Checkpoint files, oldest first. */
    public List<Path> all() throws IOException {
        if (!Files.isDirectory(dir)) return List.of();
        List<Path> out = new ArrayList<>();
        try (Stream<Path> s = Files.list(dir)) {
            s.filter(p -> NAME.matcher(p.getFileName().toString()).matches()).forEach(out::add);
        }
        out.sort(Comparator.comparingLong(Checkpoints::step));
        return out;
    }

    static long step(Path p) {
        Matcher m = NAME.matcher(p.getFileName().toString());
        return m.matches() ? Long.parseLong(m.group(1)) : -1;
    }

    /** Keeps the newest {@code keep} checkpoints, and removes temporary files a killed run may have left. */
    public void prune() throws IOException {
        List<Path> files = all();
        for (int i = 0; i < files.size() - keep; i++) Files.deleteIfExists(files.get(i));
        try (Stream<Path> s = Files.list(dir)) {
            for (Path p : s.toList()) {
                String n = p.getFileName().toString();
                if (n.startsWith(".checkpoint-") && n.endsWith(".tmp") && Files.getLastModifiedTime(p).toMillis() < START_MILLIS) Files.deleteIfExists(p);
            }
        }
    }

    // Temporary files older than this process were left by a run that was killed while writing.
    private static final long START_MILLIS = ProcessHandle.current().info().startInstant().map(java.time.Instant::toEpochMilli).orElse(0L);
}
