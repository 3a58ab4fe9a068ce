package org.distill4j.core.info;

import java.util.ArrayList;
import java.util.List;
import org.distill4j.bindings.Downcalls;
import org.distill4j.bindings.NativeLibraries;
import org.distill4j.bindings.NativeLibrary;
import org.distill4j.bindings.blas.cblas_h;
import org.distill4j.bindings.cpu.distill4j_cpu_h;
import org.distill4j.bindings.cublas.cublasLt_h;
import org.distill4j.bindings.cudnn.cudnn_h;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.cuda.CudaContext;
import org.distill4j.core.cuda.DeviceInfo;
import org.distill4j.kernels.KernelImage;

/**
 * What this machine offers Distill4J: the JVM, each native library (where it was found and its
 * version, or every place searched), the CUDA driver and GPUs, and whether our kernels are built.
 * Gathering it never throws for a missing GPU or library: that is what it reports.
 */
public record SystemReport(String java, List<Library> libraries, String driver, List<DeviceInfo> devices, String noGpuReason,
                           String kernels, String cpuBlas) {

    /**
     * One native library: found (detail = path and version) or not (detail = why and what to
     * install, searched = every place looked at, in order).
     */
    public record Library(String name, String soname, boolean found, String detail, List<String> searched) {}

    public static SystemReport gather() {
        String java = System.getProperty("java.vm.name") + " " + System.getProperty("java.runtime.version")
            + " (" + System.getProperty("java.vendor") + ", " + System.getProperty("java.home") + ")";
        List<Library> libs = new ArrayList<>();
        for (NativeLibraries.Library l : NativeLibraries.Library.values()) {
            NativeLibrary lib = NativeLibraries.forBindings(l);
            if (lib.isLoaded()) {
                libs.add(new Library(l.displayName(), l.soname(), true, lib.path().orElseThrow() + versionOf(l), List.of()));
            } else {
                var failure = lib.failure().orElseThrow();
                String why = failure.getMessage();
                int cut = why.indexOf(" Searched: ");
                libs.add(new Library(l.displayName(), l.soname(), false, cut > 0 ? why.substring(0, cut) : why, failure.searched()));
            }
        }
        String driver = "not loaded";
        List<DeviceInfo> devices = List.of();
        String noGpu = null;
        try {
            devices = CudaContext.devices();
            int v = CudaContext.driverVersion();
            driver = "CUDA " + v / 1000 + "." + (v % 1000) / 10;
            if (devices.isEmpty()) noGpu = "the driver reports no devices";
        } catch (BackendUnavailableException e) {
            noGpu = e.getMessage().startsWith("no GPU: ") ? e.getMessage().substring("no GPU: ".length()) : e.getMessage();
            if (!NativeLibraries.forBindings(NativeLibraries.Library.CUDA_DRIVER).isLoaded()) {
                noGpu = "the CUDA driver (libcuda.so.1) is not installed (see native libraries above)";
            } else {
                try {
                    int v = CudaContext.driverVersion();
                    driver = "CUDA " + v / 1000 + "." + (v % 1000) / 10;
                } catch (RuntimeException ignored) {
                    driver = "loaded, version unknown";
                }
            }
        }
        String kernels = KernelImage.built()
            ? "built by nvcc " + KernelImage.nvccVersion() + " for sm_" + KernelImage.sassArchitectures() + " + PTX: "
                + String.join(", ", KernelImage.kernelNames())
            : "not built: " + KernelImage.notBuiltReason();
        return new SystemReport(java, libs, driver, devices, noGpu, kernels, CpuBlas.provider());
    }

    private static String versionOf(NativeLibraries.Library l) {
        try {
            return switch (l) {
                case CUDNN -> ", version " + formatCudnn(cudnn_h.cudnnGetVersion());
                case CUBLASLT, CUBLAS -> ", version " + formatCublas(cublasLt_h.cublasLtGetVersion());
                case OPENBLAS -> ", " + Downcalls.cString(cblas_h.openblas_get_config(), "OpenBLAS");
                case DNNL -> ", version " + formatDnnl();
                case CUDA_DRIVER -> "";
                case DISTILL4J_CPU -> ", its " + Downcalls.cString(distill4j_cpu_h.d4j_cpu_isa(), "?") + " copy in use (" + KernelImage.cpuCompiler() + ")";
            };
        } catch (RuntimeException e) {
            return ", version unknown (" + e.getMessage() + ")";
        }
    }

    /** oneDNN's dnnl_version(): "3.8.1 (git hash, CPU runtime OpenMP)". */
    @SuppressWarnings("restricted") // FFM: dnnl_version returns a pointer to a static dnnl_version_t; sized to its layout to read it
    private static String formatDnnl() {
        var v = dnnl_h.dnnl_version().reinterpret(dnnl_h.dnnl_version_t.LAYOUT.byteSize());
        int runtime = dnnl_h.dnnl_version_t.cpu_runtime(v);
        return dnnl_h.dnnl_version_t.major(v) + "." + dnnl_h.dnnl_version_t.minor(v) + "." + dnnl_h.dnnl_version_t.patch(v)
            + " (" + Downcalls.cString(dnnl_h.dnnl_version_t.hash(v), "no hash") + ", CPU runtime "
            + (runtime == dnnl_h.DNNL_RUNTIME_OMP ? "OpenMP" : runtime == dnnl_h.DNNL_RUNTIME_SEQ ? "sequential" : String.valueOf(runtime)) + ")";
    }

    // cuDNN 9 encodes major*10000 + minor*100 + patch (92400 -> 9.24.0).
    static String formatCudnn(long v) {
        return v / 10000 + "." + (v % 10000) / 100 + "." + v % 100;
    }

    // cuBLASLt encodes major*10000 + minor*100 + patch (130101 -> 13.1.1).
    static String formatCublas(long v) {
        return v / 10000 + "." + (v % 10000) / 100 + "." + v % 100;
    }

    /** The report as the lines {@code distill info} prints. */
    public List<String> lines() {
        List<String> out = new ArrayList<>();
        out.add("Distill4J " + version());
        out.add("java:     " + java);
        out.add("cpu:      " + Runtime.getRuntime().availableProcessors() + " cores, gemm on " + cpuBlas + "; fused loss on the "
            + CpuBackend.fastLossPath());
        out.add("native libraries:");
        for (Library l : libraries) {
            out.add(String.format("  %-11s %-18s %s", l.name(), l.soname(), l.found() ? l.detail() : "MISSING: " + l.detail()));
            for (String place : l.searched()) out.add(String.format("  %-11s %-18s   searched %s", "", "", place));
        }
        out.add("cuda:     driver " + driver);
        if (devices.isEmpty()) {
            out.add("gpu:      no GPU: " + noGpuReason);
        } else {
            for (DeviceInfo d : devices) out.add("gpu:      " + d);
        }
        out.add("kernels:  " + kernels);
        return out;
    }

    public static String version() {
        String v = SystemReport.class.getPackage().getImplementationVersion();
        return v != null ? v : "0.1.0-SNAPSHOT";
    }
}
