package org.distill4j.cli;

import org.distill4j.core.Backend;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cuda.CudaBackend;

/** The one --device rule of every command: cpu or cuda (GPU 0). */
final class Devices {
    private Devices() {}

    /** Checks the value before any work starts. */
    static void check(String device) {
        if (!device.equals("cpu") && !device.equals("cuda")) throw new IllegalArgumentException("--device must be cpu or cuda, got '" + device + "'");
    }

    static Backend open(String device) {
        check(device);
        return device.equals("cuda") ? CudaBackend.create(0) : CpuBackend.get();
    }
}
