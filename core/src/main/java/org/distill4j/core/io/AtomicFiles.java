package org.distill4j.core.io;

import java.io.IOException;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;

/** Writing files so that no reader ever sees a half-written one: write a temporary file beside the target, then rename it. */
public final class AtomicFiles {
    private AtomicFiles() {}

    /** A temporary file in the target's folder, named after it. */
    public static Path temporaryFor(Path target) throws IOException {
        return Files.createTempFile(target.toAbsolutePath().getParent(), "." + target.getFileName(), ".tmp");
    }

    /**
     * Renames a finished temporary file over {@code target} (atomically where the file system can),
     * with the usual rw-r--r-- permissions rather than the temporary file's owner-only ones.
     */
    public static void publish(Path tmp, Path target) throws IOException {
        try {
            Files.setPosixFilePermissions(tmp, PosixFilePermissions.fromString("rw-r--r--"));
        } catch (UnsupportedOperationException notPosix) {
            // Not a POSIX file system: keep its defaults.
        }
        try {
            Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (AtomicMoveNotSupportedException e) {
            Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
        }
    }
}
