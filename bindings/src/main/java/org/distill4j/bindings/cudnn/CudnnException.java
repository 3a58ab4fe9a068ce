package org.distill4j.bindings.cudnn;

import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.NativeStatusException;

/** A cuDNN call returned something other than CUDNN_STATUS_SUCCESS. */
@SuppressWarnings("restricted") // FFM: reading C strings and binding symbols is this class's job; native access is granted to this module
public final class CudnnException extends NativeStatusException {
    private static final long serialVersionUID = 1L;

    public CudnnException(String call, int status) {
        // cuDNN has one text per status, which is the status's own name (e.g. CUDNN_STATUS_BAD_PARAM).
        super("cuDNN", call, status, text(status), "see cuDNN's documentation of " + call);
    }

    /** Throws {@link CudnnException} unless {@code status} is CUDNN_STATUS_SUCCESS. */
    public static void check(int status, String call) {
        if (status != cudnn_h.CUDNN_STATUS_SUCCESS) throw new CudnnException(call, status);
    }

    private static String text(int status) {
        MemorySegment s = cudnn_h.cudnnGetErrorString(status);
        return s.equals(MemorySegment.NULL) ? "cudnnStatus_t " + status : s.reinterpret(1024).getString(0);
    }
}
