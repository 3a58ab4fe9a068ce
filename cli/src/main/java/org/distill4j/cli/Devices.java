package org.distill4j.cli;

import org.distill4j.core.Backend;
import org.distill4j.core.BackendUnavailableException;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;

/** The one --device rule of every command: cpu or cuda (GPU 0). */
final class Devices {
    private Devices() {}

    /** Checks the value before any work starts. */
    static void check(String device) {
        if (!device.equals("cpu") && !device.equals("cuda")) throw new IllegalArgumentException("--device must be cpu or cuda, got '" + device + "'");
    }

    /**
     * The backend of {@code device}. No usable GPU for {@code cuda} is the user's to fix (another
     * machine, or --device cpu), so it is bad input: one line, exit 2.
     */
    static Backend open(String device) {
        check(device);
        if (!device.equals("cuda")) return CpuBackend.get();
        try {
            return CudaBackend.create(0);
        } catch (BackendUnavailableException e) {
            String why = e.getMessage() == null ? "no CUDA device" : e.getMessage().lines().findFirst().orElse("no CUDA device");
            throw new IllegalArgumentException("--device cuda: " + why, e);
        }
    }

    /**
     * {@link #open} for a decoder (predict, generate, eval): on CUDA in strict FP32 (cuBLAS without
     * TF32), as PyTorch computes a float32 transformers model by default (matmul TF32 off), so the
     * logits are those of the CPU and of transformers to float32 rounding.
     */
    static Backend openForDecoder(String device) {
        Backend b = open(device);
        if (b instanceof CudaBackend cuda) cuda.setMathMode(CudaBackend.MathMode.STRICT_FP32);
        return b;
    }
}
