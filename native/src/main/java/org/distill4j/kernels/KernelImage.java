package org.distill4j.kernels;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.Arrays;
import java.util.List;
import java.util.Optional;
import java.util.Properties;

/**
 * The fatbin built from native/src/main/cuda by build-kernels.sh, and what the build said about it.
 *
 * <p>The fatbin holds SASS for sm_80, sm_86, sm_89, sm_90, sm_100 and sm_120 plus PTX for the
 * newest of them, so the driver either picks matching SASS or JIT-compiles the PTX for a newer GPU.
 * A build without nvcc ships no fatbin; {@link #notBuiltReason()} then says why.
 */
public final class KernelImage {
    private static final String FATBIN = "distill4j.fatbin";
    private static final String PROPERTIES = "kernels.properties";
    private static final Properties INFO = loadInfo();

    private KernelImage() {}

    /** True when this build of Distill4J carries compiled kernels. */
    public static boolean built() {
        return Boolean.parseBoolean(INFO.getProperty("built", "false"));
    }

    /** Why the kernels are missing ("" when they were built). */
    public static String notBuiltReason() {
        return built() ? "" : INFO.getProperty("reason", "kernels.properties is missing from the distill4j-native jar");
    }

    /** nvcc release that built the image, e.g. "13.0", or "" when not built. */
    public static String nvccVersion() {
        return INFO.getProperty("nvcc", "");
    }

    /** SASS architectures in the image, e.g. [80, 86, 89, 90, 100, 120]. */
    public static List<Integer> sassArchitectures() {
        String archs = INFO.getProperty("archs", "").trim();
        return archs.isEmpty() ? List.of() : Arrays.stream(archs.split("\\s+")).map(Integer::valueOf).toList();
    }

    /** Kernel entry points in the image (extern "C" names). */
    public static List<String> kernelNames() {
        String names = INFO.getProperty("kernels", "").trim();
        return names.isEmpty() ? List.of() : List.of(names.split("\\s+"));
    }

    /** The fatbin bytes, or empty when the kernels were not built. */
    public static Optional<byte[]> fatbin() {
        try (InputStream in = KernelImage.class.getResourceAsStream(FATBIN)) {
            return in == null ? Optional.empty() : Optional.of(in.readAllBytes());
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + FATBIN + " from the distill4j-native jar", e);
        }
    }

    private static Properties loadInfo() {
        Properties p = new Properties();
        try (InputStream in = KernelImage.class.getResourceAsStream(PROPERTIES)) {
            if (in != null) p.load(in);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + PROPERTIES + " from the distill4j-native jar", e);
        }
        return p;
    }
}
