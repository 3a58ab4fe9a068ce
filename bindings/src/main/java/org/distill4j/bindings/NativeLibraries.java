package org.distill4j.bindings;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.lang.foreign.MemorySegment;
import java.net.URL;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;

/**
 * Finds and opens the native libraries Distill4J uses, in one documented order (docs/native-libraries.md):
 *
 * <ol>
 *   <li>an explicit file: system property {@code distill4j.<key>.path} or environment variable
 *       {@code DISTILL4J_<KEY>_PATH} (key: cuda, cublas, cublaslt, cudnn, openblas, dnnl). An explicit
 *       setting that does not work is an error, never silently skipped;</li>
 *   <li>folders in {@code -Ddistill4j.library.path} or {@code DISTILL4J_LIBRARY_PATH};</li>
 *   <li>OpenBLAS and oneDNN only: the natives jar {@code org.bytedeco:openblas:linux-x86_64} or
 *       {@code org.bytedeco:dnnl:linux-x86_64} (with {@code org.bytedeco:opencl:linux-x86_64}) on the
 *       class path, extracted once into {@code ~/.cache/distill4j/natives/};</li>
 *   <li>Distill4J's CPU kernels only: the library inside the distill4j-native jar, extracted once per
 *       content hash into {@code ~/.cache/distill4j/natives/};</li>
 *   <li>NVIDIA libraries: {@code CUDA_HOME}/{@code CUDA_PATH} and {@code /usr/local/cuda}
 *       ({@code lib64}, {@code targets/x86_64-linux/lib});</li>
 *   <li>{@code LD_LIBRARY_PATH}, then {@code java.library.path};</li>
 *   <li>NVIDIA libraries: the site-packages of NVIDIA's Python wheels ({@code nvidia/cu13/lib},
 *       {@code nvidia/cudnn/lib}) in {@code DISTILL4J_PYTHON_SITE}, {@code VIRTUAL_ENV},
 *       {@code CONDA_PREFIX}, the user's and the system's Python;</li>
 *   <li>the system loader by soname (ld.so.cache and the default folders).</li>
 * </ol>
 *
 * Full sonames only ({@code libcuda.so.1}, never {@code libcuda.so}, which in a toolkit is a stub).
 */
public final class NativeLibraries {
    private NativeLibraries() {}

    /** The libraries we bind, with their sonames and what a user installs to get them. */
    public enum Library {
        CUDA_DRIVER("cuda", "libcuda.so.1", "CUDA driver", List.of(), "install the NVIDIA driver"),
        CUBLASLT("cublaslt", "libcublasLt.so.13", "cuBLASLt", List.of("nvidia/cu13/lib"),
            "install the CUDA 13 toolkit or: pip install nvidia-cublas"),
        CUBLAS("cublas", "libcublas.so.13", "cuBLAS", List.of("nvidia/cu13/lib"),
            "install the CUDA 13 toolkit or: pip install nvidia-cublas"),
        CUDNN("cudnn", "libcudnn.so.9", "cuDNN", List.of("nvidia/cudnn/lib"),
            "install cuDNN 9 or: pip install nvidia-cudnn-cu13"),
        OPENBLAS("openblas", "libopenblas.so.0", "OpenBLAS", List.of(),
            "add org.bytedeco:openblas:" + "0.3.30-1.5.12:linux-x86_64 to the class path, or: apt-get install libopenblas0"),
        /** oneDNN 3 (CPU engine only; the bytedeco build also needs libOpenCL.so.1, which it loads but never uses here). */
        DNNL("dnnl", "libdnnl.so.3", "oneDNN", List.of(),
            "add org.bytedeco:dnnl:3.8.1-1.5.12:linux-x86_64 and org.bytedeco:opencl:3.0-1.5.12:linux-x86_64 to the class path, or: apt-get install libdnnl3"),
        /** Our own CPU kernels (native/src/main/c), shipped inside the distill4j-native jar. */
        DISTILL4J_CPU("cpukernels", "libdistill4j_cpu.so", "CPU kernels", List.of(),
            "use a distill4j-native jar built on Linux x86-64 with a C compiler (native/build-cpu-kernels.sh)");

        private final String key;
        private final String soname;
        private final String displayName;
        private final List<String> wheelDirs;
        private final String installHint;

        Library(String key, String soname, String displayName, List<String> wheelDirs, String installHint) {
            this.key = key;
            this.soname = soname;
            this.displayName = displayName;
            this.wheelDirs = wheelDirs;
            this.installHint = installHint;
        }

        public String key() { return key; }
        public String soname() { return soname; }
        public String displayName() { return displayName; }
        public String installHint() { return installHint; }
        boolean isNvidia() { return this != OPENBLAS && this != DNNL && this != DISTILL4J_CPU; }
        public String pathProperty() { return "distill4j." + key + ".path"; }
        public String pathEnv() { return "DISTILL4J_" + key.toUpperCase(Locale.ROOT) + "_PATH"; }
    }

    private static final Map<Library, NativeLibrary> LOADED = new EnumMap<>(Library.class);

    /**
     * The library for a generated header class: loaded, or carrying the reason it is not, so that
     * the class initialises either way and only calls fail (with that reason).
     */
    public static synchronized NativeLibrary forBindings(Library library) {
        return LOADED.computeIfAbsent(library, NativeLibraries::open);
    }

    /** The library, loaded; throws {@link NativeLibraryException} naming every place searched. */
    public static NativeLibrary load(Library library) {
        NativeLibrary lib = forBindings(library);
        lib.failure().ifPresent(e -> { throw e; });
        return lib;
    }

    static NativeLibrary open(Library library) { // package-private: tests open without the cache
        List<String> searched = new ArrayList<>();
        // cuBLAS needs cuBLASLt: open it first so that a cuBLAS found in a folder without it (or
        // with RUNPATH not pointing at it) still resolves, and so its absence is named clearly.
        if (library == Library.CUBLAS) {
            NativeLibrary lt = forBindings(Library.CUBLASLT);
            if (!lt.isLoaded()) {
                return NativeLibrary.missing(library, new NativeLibraryException(library,
                    "cuBLAS (" + library.soname + ") needs " + Library.CUBLASLT.soname + ", which was not found: "
                        + lt.failure().orElseThrow().getMessage(), lt.failure().orElseThrow().searched()));
            }
        }
        if (library == Library.DNNL) {
            // libgomp reads OMP_WAIT_POLICY once, when it loads (with libdnnl.so.3, below). Unset, its
            // threads spin after every parallel region; between oneDNN's gemms our own fork-join loops
            // (bias, activations, norms) need those cores, so they sleep instead unless the user says
            // otherwise (measured: bench/RESULTS.md, "oneDNN matmul").
            NativeLibrary.setenvUnlessSet("OMP_WAIT_POLICY", "PASSIVE");
        }
        String explicit = setting(library.pathProperty(), library.pathEnv());
        if (explicit != null) {
            Path p = Path.of(explicit);
            try {
                return NativeLibrary.opened(library, p, NativeLibrary.dlopen(p.toString()));
            } catch (IllegalArgumentException e) {
                String msg = library.displayName + ": " + library.pathProperty() + " / " + library.pathEnv() + " = " + explicit
                    + (Files.exists(p) ? " cannot be loaded: " + e.getMessage() + dependencyHint(e.getMessage(), library)
                                       : " does not exist");
                return NativeLibrary.missing(library, new NativeLibraryException(library, msg, List.of(explicit)));
            }
        }
        for (Candidate c : candidates(library)) {
            Path file = c.dir.resolve(library.soname);
            if (!Files.isRegularFile(file)) {
                searched.add(c.origin + ": " + c.dir + " (not there)");
                continue;
            }
            try {
                if (library == Library.OPENBLAS) preloadOpenBlasDependencies(c.dir);
                return NativeLibrary.opened(library, file, NativeLibrary.dlopen(file.toString()));
            } catch (IllegalArgumentException e) {
                String msg = library.displayName + " found at " + file + " but it cannot be loaded: " + e.getMessage()
                    + dependencyHint(e.getMessage(), library);
                searched.add(c.origin + ": " + file + " (found, not loadable)");
                return NativeLibrary.missing(library, new NativeLibraryException(library, msg, searched));
            }
        }
        try {
            MemorySegment h = NativeLibrary.dlopen(library.soname);
            return NativeLibrary.opened(library, Path.of(library.soname), h);
        } catch (IllegalArgumentException e) {
            searched.add("system loader (ld.so.cache, /lib, /usr/lib): " + e.getMessage());
        }
        String msg = library.displayName + " (" + library.soname + ") not found; " + library.installHint
            + ", or point " + library.pathProperty() + " / " + library.pathEnv() + " at the file. Searched: "
            + String.join("; ", searched);
        return NativeLibrary.missing(library, new NativeLibraryException(library, msg, searched));
    }

    private static String dependencyHint(String dlerror, Library library) {
        if (dlerror != null && dlerror.contains("cannot open shared object file")) {
            String dep = dlerror.substring(0, dlerror.indexOf(':')).trim();
            if (!dep.endsWith(library.soname)) {
                return " (a library it depends on, " + dep + ", is missing: put it beside " + library.soname
                    + " or on LD_LIBRARY_PATH)";
            }
        }
        return "";
    }

    private record Candidate(String origin, Path dir) {}

    private static List<Candidate> candidates(Library library) {
        List<Candidate> out = new ArrayList<>();
        String dirs = setting("distill4j.library.path", "DISTILL4J_LIBRARY_PATH");
        if (dirs != null) for (String d : dirs.split(":")) if (!d.isBlank()) out.add(new Candidate("distill4j.library.path", Path.of(d)));
        if (library == Library.OPENBLAS) {
            natives(OPENBLAS_JAR).ifPresent(d -> out.add(new Candidate("natives jar on the class path", d)));
        }
        if (library == Library.DNNL) {
            natives(DNNL_JAR).ifPresent(d -> out.add(new Candidate("natives jar on the class path", d)));
        }
        if (library == Library.DISTILL4J_CPU) {
            cpuKernels().ifPresent(d -> out.add(new Candidate("distill4j-native jar", d)));
        }
        if (library.isNvidia()) {
            for (String env : List.of("CUDA_HOME", "CUDA_PATH")) {
                String home = System.getenv(env);
                if (home != null && !home.isBlank()) {
                    out.add(new Candidate(env, Path.of(home, "lib64")));
                    out.add(new Candidate(env, Path.of(home, "targets", "x86_64-linux", "lib")));
                }
            }
            out.add(new Candidate("CUDA toolkit", Path.of("/usr/local/cuda/lib64")));
            out.add(new Candidate("CUDA toolkit", Path.of("/usr/local/cuda/targets/x86_64-linux/lib")));
            if (library == Library.CUDA_DRIVER) out.add(new Candidate("WSL driver", Path.of("/usr/lib/wsl/lib")));
        }
        for (String origin : List.of("LD_LIBRARY_PATH", "java.library.path")) {
            String v = origin.equals("LD_LIBRARY_PATH") ? System.getenv(origin) : System.getProperty(origin);
            if (v != null) for (String d : v.split(":")) if (!d.isBlank()) out.add(new Candidate(origin, Path.of(d)));
        }
        for (String sub : library.wheelDirs) {
            for (Path site : pythonSitePackages()) out.add(new Candidate("Python site-packages", site.resolve(sub)));
        }
        return out;
    }

    /** Folders where NVIDIA's Python wheels may be installed, most specific first. */
    static List<Path> pythonSitePackages() {
        List<Path> out = new ArrayList<>();
        String explicit = System.getenv("DISTILL4J_PYTHON_SITE");
        if (explicit != null && !explicit.isBlank()) out.add(Path.of(explicit));
        for (String env : List.of("VIRTUAL_ENV", "CONDA_PREFIX")) {
            String prefix = System.getenv(env);
            if (prefix != null && !prefix.isBlank()) out.addAll(glob(Path.of(prefix, "lib"), "python3*", "site-packages"));
        }
        String home = System.getProperty("user.home");
        out.addAll(glob(Path.of(home, ".local", "lib"), "python3*", "site-packages"));
        out.addAll(glob(Path.of("/usr/local/lib"), "python3*", "site-packages"));
        out.addAll(glob(Path.of("/usr/local/lib"), "python3*", "dist-packages"));
        out.add(Path.of("/usr/lib/python3/dist-packages"));
        return out;
    }

    private static List<Path> glob(Path parent, String pattern, String child) {
        List<Path> out = new ArrayList<>();
        if (!Files.isDirectory(parent)) return out;
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(parent, pattern)) {
            for (Path p : ds) if (Files.isDirectory(p.resolve(child))) out.add(p.resolve(child));
        } catch (IOException e) {
            // An unreadable folder is simply not a candidate.
        }
        out.sort(null);
        return out;
    }

    private static String setting(String property, String env) {
        String v = System.getProperty(property);
        if (v == null || v.isBlank()) v = System.getenv(env);
        return v == null || v.isBlank() ? null : v;
    }

    // ---- OpenBLAS and oneDNN from bytedeco's natives jars

    /**
     * One library's natives jar: the artifact whose pom.properties names the version, and the files
     * to extract (resource path inside the jars -> file name), dependencies first, the library last.
     */
    private record NativesJar(String artifact, String cacheName, List<String> resources) {
        String library() { return resources.getLast(); }
    }

    private static final NativesJar OPENBLAS_JAR = new NativesJar("openblas", "openblas", List.of(
        "org/bytedeco/openblas/linux-x86_64/libgcc_s.so.1", "org/bytedeco/openblas/linux-x86_64/libquadmath.so.0",
        "org/bytedeco/openblas/linux-x86_64/libgfortran.so.5", "org/bytedeco/openblas/linux-x86_64/libopenblas.so.0"));
    /**
     * libdnnl.so.3 carries RUNPATH $ORIGIN, so the libgomp.so.1 and libOpenCL.so.1 extracted beside
     * it are the ones it loads (unless the process already has a copy by that soname). libOpenCL.so.1
     * comes from the opencl natives jar: this oneDNN build links its OpenCL GPU runtime, which finds
     * no OpenCL device on a machine without one and leaves the CPU engine alone.
     */
    private static final NativesJar DNNL_JAR = new NativesJar("dnnl", "dnnl", List.of(
        "org/bytedeco/opencl/linux-x86_64/libOpenCL.so.1", "org/bytedeco/dnnl/linux-x86_64/libgomp.so.1",
        "org/bytedeco/dnnl/linux-x86_64/libdnnl.so.3"));
    /** Loaded before libopenblas.so.0 when the system has no copy of its own (dlopen by soname fails). */
    private static final List<String> OPENBLAS_DEPENDENCIES = List.of("libgcc_s.so.1", "libquadmath.so.0", "libgfortran.so.5");

    private static String fileName(String resource) {
        return resource.substring(resource.lastIndexOf('/') + 1);
    }

    /**
     * Extracts a library and its runtime libraries from its natives jar, once per version, into
     * ~/.cache/distill4j/natives/NAME-VERSION/ (each file written to a temp name, then renamed, so a
     * concurrent or interrupted extraction never leaves a half-written library). Empty when the
     * jar holding the library itself is not on the class path; a missing dependency file is skipped
     * (the loader's error then names it).
     */
    private static Optional<Path> natives(NativesJar jar) {
        ClassLoader cl = NativeLibraries.class.getClassLoader();
        URL lib = cl == null ? null : cl.getResource(jar.library());
        if (lib == null) lib = ClassLoader.getSystemResource(jar.library());
        if (lib == null) return Optional.empty();
        ClassLoader loader = cl != null ? cl : ClassLoader.getSystemClassLoader();
        String version = "unknown";
        try (InputStream in = loader.getResourceAsStream("META-INF/maven/org.bytedeco/" + jar.artifact() + "/pom.properties")) {
            if (in != null) {
                Properties p = new Properties();
                p.load(in);
                version = p.getProperty("version", version);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        String cache = setting("distill4j.cache.dir", "DISTILL4J_CACHE_DIR");
        Path dir = (cache != null ? Path.of(cache) : Path.of(System.getProperty("user.home"), ".cache", "distill4j"))
            .resolve("natives").resolve(jar.cacheName() + "-" + version);
        try {
            Files.createDirectories(dir);
            for (String resource : jar.resources()) {
                Path target = dir.resolve(fileName(resource));
                if (Files.isRegularFile(target)) continue;
                try (InputStream in = loader.getResourceAsStream(resource)) {
                    if (in == null) continue;
                    Path tmp = Files.createTempFile(dir, fileName(resource), ".tmp");
                    Files.copy(in, tmp, StandardCopyOption.REPLACE_EXISTING);
                    Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
                }
            }
            return Optional.of(dir);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot extract " + fileName(jar.library()) + " from the natives jar into " + dir, e);
        }
    }

    // ---- Distill4J's CPU kernels from the distill4j-native jar

    /**
     * Extracts libdistill4j_cpu.so from the distill4j-native jar into
     * ~/.cache/distill4j/natives/distill4j-cpu-HASH/ (HASH: the first 16 hex digits of the library's
     * SHA-256, so a rebuilt snapshot never loads a stale copy), written to a temp name and renamed.
     * Empty when the jar carries none (KernelImage.cpuLibraryNotBuiltReason says why).
     */
    private static Optional<Path> cpuKernels() {
        Optional<byte[]> lib = org.distill4j.kernels.KernelImage.cpuLibrary();
        if (lib.isEmpty()) return Optional.empty();
        String hash;
        try {
            hash = java.util.HexFormat.of().formatHex(java.security.MessageDigest.getInstance("SHA-256").digest(lib.get())).substring(0, 16);
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this Java runtime", e);
        }
        String cache = setting("distill4j.cache.dir", "DISTILL4J_CACHE_DIR");
        Path dir = (cache != null ? Path.of(cache) : Path.of(System.getProperty("user.home"), ".cache", "distill4j"))
            .resolve("natives").resolve("distill4j-cpu-" + hash);
        Path target = dir.resolve(Library.DISTILL4J_CPU.soname());
        try {
            if (!Files.isRegularFile(target)) {
                Files.createDirectories(dir);
                Path tmp = Files.createTempFile(dir, "libdistill4j_cpu", ".tmp");
                Files.write(tmp, lib.get());
                Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            }
            return Optional.of(dir);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot extract " + Library.DISTILL4J_CPU.soname() + " from the distill4j-native jar into " + dir, e);
        }
    }

    private static void preloadOpenBlasDependencies(Path dir) {
        for (String dep : OPENBLAS_DEPENDENCIES) {
            try {
                NativeLibrary.dlopen(dep);
            } catch (IllegalArgumentException notOnSystem) {
                Path bundled = dir.resolve(dep);
                if (Files.isRegularFile(bundled)) NativeLibrary.dlopen(bundled.toString());
            }
        }
    }
}
