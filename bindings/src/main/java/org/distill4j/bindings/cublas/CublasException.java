package org.distill4j.bindings.cublas;

import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.NativeStatusException;

/** A cuBLAS or cuBLASLt call returned something other than CUBLAS_STATUS_SUCCESS. */
@SuppressWarnings("restricted") // FFM: reading C strings and binding symbols is this class's job; native access is granted to this module
public final class CublasException extends NativeStatusException {
    private static final long serialVersionUID = 1L;

    public CublasException(String call, int status) {
        super("cuBLAS", call, status, text(cublas_h.cublasGetStatusName(status), "cublasStatus_t " + status),
            text(cublas_h.cublasGetStatusString(status), "unrecognised status"));
    }

    /** Throws {@link CublasException} unless {@code status} is CUBLAS_STATUS_SUCCESS. */
    public static void check(int status, String call) {
        if (status != cublas_h.CUBLAS_STATUS_SUCCESS) throw new CublasException(call, status);
    }

    private static String text(MemorySegment s, String fallback) {
        return s.equals(MemorySegment.NULL) ? fallback : s.reinterpret(1024).getString(0);
    }
}
