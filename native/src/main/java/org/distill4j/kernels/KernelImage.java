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
 *
 * <p>Beside it, the CPU kernels: libdistill4j_cpu.so from native/src/main/c (build-cpu-kernels.sh),
 * extracted and opened by the bindings' NativeLibraries; {@link #cpuLibraryNotBuiltReason()} says why
 * a build has none.
 */
public final class KernelImage {
    private static final String FATBIN = "distill4j.fatbin";
    private static final String PROPERTIES = "kernels.properties";
    private static final Properties INFO = loadInfo(PROPERTIES);
    private static final String CPU_LIBRARY = "linux-x86_64/libdistill4j_cpu.so";
    private static final String CPU_PROPERTIES = "cpu-kernels.properties";
    private static final Properties CPU_INFO = loadInfo(CPU_PROPERTIES);

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

    /**
     * True when this build carries the CPU kernels' shared library (native/src/main/c, built by the C
     * compiler for Linux x86-64: the fused loss's float fast path).
     */
    public static boolean cpuLibraryBuilt() {
        return Boolean.parseBoolean(CPU_INFO.getProperty("built", "false"));
    }

    /** Why the CPU kernels are missing ("" when they were built). */
    public static String cpuLibraryNotBuiltReason() {
        return cpuLibraryBuilt() ? "" : CPU_INFO.getProperty("reason", CPU_PROPERTIES + " is missing from the distill4j-native jar");
    }

    /** The compiler that built the CPU kernels (its --version line), or "". */
    public static String cpuCompiler() {
        return CPU_INFO.getProperty("compiler", "");
    }

    /** The bytes of libdistill4j_cpu.so (Linux x86-64), or empty when it was not built. */
    public static Optional<byte[]> cpuLibrary() {
        try (InputStream in = KernelImage.class.getResourceAsStream(CPU_LIBRARY)) {
            return in == null ? Optional.empty() : Optional.of(in.readAllBytes());
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + CPU_LIBRARY + " from the distill4j-native jar", e);
        }
    }

    private static Properties loadInfo(String name) {
        Properties p = new Properties();
        try (InputStream in = KernelImage.class.getResourceAsStream(name)) {
            if (in != null) p.load(in);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + name + " from the distill4j-native jar", e);
        }
        return p;
    }
}
