package org.distill4j.core;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;

/** Small data files the tests write. */
public final class TestFiles {
    private TestFiles() {}

    /**
     * A test resource as a file: from the class path when it is a folder (Maven), else from the
     * repository's core/src/test/resources (tests run from jars, as on the GPU machine).
     */
    public static Path resource(String name) {
        try {
            java.net.URL url = TestFiles.class.getResource(name);
            if (url != null && url.getProtocol().equals("file")) return Path.of(url.toURI());
        } catch (java.net.URISyntaxException e) {
            throw new IllegalStateException(e);
        }
        for (Path root : new Path[] {Path.of("core/src/test/resources"), Path.of("src/test/resources"), Path.of("../core/src/test/resources")}) {
            Path p = root.resolve(name.substring(1));
            if (Files.exists(p)) return p.toAbsolutePath();
        }
        throw new IllegalStateException("test resource " + name + " not found on the class path or under core/src/test/resources");
    }

    /** n images of 2x3 whose pixel bytes are (i * 7 + p) % 256 and labels i % 10. */
    public static Path[] writeIdx(Path dir, int n) throws Exception {
        ByteBuffer img = ByteBuffer.allocate(16 + n * 6).putInt(0x803).putInt(n).putInt(2).putInt(3);
        ByteBuffer lab = ByteBuffer.allocate(8 + n).putInt(0x801).putInt(n);
        for (int i = 0; i < n; i++) {
            for (int p = 0; p < 6; p++) img.put((byte) ((i * 7 + p) % 256));
            lab.put((byte) (i % 10));
        }
        Path a = dir.resolve("images-idx3-ubyte"), b = dir.resolve("labels-idx1-ubyte");
        Files.write(a, img.array());
        Files.write(b, lab.array());
        return new Path[] {a, b};
    }
}
