package org.distill4j.core.cuda;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.distill4j.bindings.NativeLibraries;
import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.info.SystemReport;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/** On a machine without a GPU, asking for CUDA is one clear exception, and the report says why. */
class CudaBackendWithoutGpuTest {
    @Test
    void creatingTheCudaBackendThrowsOneClearException() {
        Assumptions.assumeFalse(NativeLibraries.forBindings(NativeLibraries.Library.CUDA_DRIVER).isLoaded(),
            "a CUDA driver is installed here; the GPU suite covers this machine");
        BackendUnavailableException e = assertThrows(BackendUnavailableException.class, () -> CudaBackend.create(0));
        assertTrue(e.getMessage().startsWith("no GPU: ") || e.getMessage().startsWith("CUDA backend unavailable: "), e.getMessage());
        assertTrue(e.getMessage().contains("libcuda.so.1") || e.getMessage().contains("kernels"), e.getMessage());
        assertThrows(BackendUnavailableException.class, () -> CudaContext.open(0));
        assertThrows(BackendUnavailableException.class, CudaContext::devices);
    }

    @Test
    void theSystemReportSaysWhyThereIsNoGpu() {
        Assumptions.assumeFalse(NativeLibraries.forBindings(NativeLibraries.Library.CUDA_DRIVER).isLoaded(), "a CUDA driver is installed here");
        SystemReport r = SystemReport.gather();
        assertTrue(r.devices().isEmpty());
        assertTrue(r.lines().stream().anyMatch(l -> l.startsWith("gpu:      no GPU: ")), String.join("\n", r.lines()));
        assertTrue(r.lines().stream().anyMatch(l -> l.contains("libcuda.so.1") && l.contains("MISSING")), String.join("\n", r.lines()));
    }
}
