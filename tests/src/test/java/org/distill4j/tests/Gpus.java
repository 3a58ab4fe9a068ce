package org.distill4j.tests;

import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.cuda.CudaBackend;
import org.junit.jupiter.api.Assumptions;

/** The GPU suites' shared setup: the CUDA backend on GPU 0, or a clean skip saying why there is none. */
final class Gpus {
    private Gpus() {}

    static CudaBackend openOrSkip() {
        try {
            return CudaBackend.create(0);
        } catch (BackendUnavailableException e) {
            System.out.println("GPU tests skipped: " + e.getMessage());
            Assumptions.abort("GPU tests skipped: " + e.getMessage());
            throw e; // not reached: abort throws
        }
    }
}
