package org.distill4j.core.cpu;

import java.util.Locale;

/**
 * What the CPU backend's gemm runs on. Chosen once per process by the system property
 * {@code distill4j.cpu.engine} ({@code onednn}, {@code openblas} or {@code java}; the CLI's
 * {@code --cpu-engine} sets it); without it, the fastest one present: oneDNN, then OpenBLAS, then
 * the pure-Java gemm. OpenBLAS and Java stay as the fallbacks and the tested oracles.
 */
public enum CpuEngine {
    /** oneDNN's matmul primitive, created once per shape and cached (OnednnMatmul); convolution and pooling on its primitives too (OnednnConv, OnednnPool). */
    ONEDNN("onednn"),
    /** OpenBLAS's cblas_sgemm. */
    OPENBLAS("openblas"),
    /** The plain Java gemm (CpuBlas.javaSgemm): correct for every shape, slow. */
    JAVA("java");

    /** The system property that picks the engine. */
    public static final String PROPERTY = "distill4j.cpu.engine";

    private final String key;

    CpuEngine(String key) {
        this.key = key;
    }

    /** The name the property and the CLI flag use. */
    public String key() {
        return key;
    }

    /** The engine named {@code name} (case-insensitive); a one-line error naming the choices otherwise. */
    public static CpuEngine parse(String name) {
        for (CpuEngine e : values()) if (e.key.equals(name.trim().toLowerCase(Locale.ROOT))) return e;
        throw new IllegalArgumentException(PROPERTY + ": unknown CPU engine '" + name + "', expected onednn, openblas or java");
    }

    /** Whether this engine's library is loaded here (Java always is). */
    public boolean available() {
        return switch (this) {
            case ONEDNN -> Onednn.available();
            case OPENBLAS -> CpuBlas.openBlasLoaded();
            case JAVA -> true;
        };
    }

    /** Why this engine is not available (empty string when it is). */
    public String unavailableReason() {
        return switch (this) {
            case ONEDNN -> Onednn.unavailableReason();
            case OPENBLAS -> CpuBlas.openBlasUnavailableReason();
            case JAVA -> "";
        };
    }
}
