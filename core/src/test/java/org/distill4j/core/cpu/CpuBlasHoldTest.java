package org.distill4j.core.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.distill4j.bindings.blas.cblas_h;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/**
 * The single-threaded holds: the full hold (OpenBLAS and oneDNN, a Predictor on its callers'
 * threads) and the OpenBLAS-only hold (a Predictor with the libraries' pools on the oneDNN engine)
 * share one reference count for OpenBLAS's thread count, which comes back when the last hold of
 * either kind is released; only the full hold makes oneDNN single-threaded.
 */
class CpuBlasHoldTest {
    @Test
    void holdsNestAndRestoreOpenBlasThreads() {
        Assumptions.assumeTrue(CpuBlas.openBlasLoaded(), "OpenBLAS not loaded here");
        int before = cblas_h.openblas_get_num_threads();
        assertFalse(CpuBlas.singleThreadedHeld(), "no hold at the start");
        CpuBlas.holdOpenBlasSingleThreaded();
        assertEquals(1, cblas_h.openblas_get_num_threads());
        assertFalse(CpuBlas.singleThreadedHeld(), "the OpenBLAS-only hold leaves oneDNN its threads");
        CpuBlas.holdSingleThreaded();
        assertTrue(CpuBlas.singleThreadedHeld());
        CpuBlas.releaseOpenBlasSingleThreaded();
        assertEquals(1, cblas_h.openblas_get_num_threads(), "the full hold still holds OpenBLAS");
        assertTrue(CpuBlas.singleThreadedHeld());
        CpuBlas.releaseSingleThreaded();
        assertFalse(CpuBlas.singleThreadedHeld());
        assertEquals(before, cblas_h.openblas_get_num_threads(), "OpenBLAS's thread count comes back with the last release");
        CpuBlas.releaseOpenBlasSingleThreaded(); // an extra release does nothing
        CpuBlas.releaseSingleThreaded();
        assertEquals(before, cblas_h.openblas_get_num_threads());
    }
}
