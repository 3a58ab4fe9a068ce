package org.distill4j.core;

/** Element types of tensor storage. Compute is float32; bf16/f16 are storage formats, integers hold labels and indices. */
public enum DType {
    F32(4), BF16(2), F16(2), I64(8), I32(4), U8(1);

    private final int bytes;

    DType(int bytes) {
        this.bytes = bytes;
    }

    /** Bytes per element. */
    public int bytes() {
        return bytes;
    }
}
