package org.distill4j.bindings.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.NativeStatusException;

/** A CUDA driver API call returned something other than CUDA_SUCCESS. */
@SuppressWarnings("restricted") // FFM: reading C strings and binding symbols is this class's job; native access is granted to this module
public final class CudaException extends NativeStatusException {
    private static final long serialVersionUID = 1L;

    public CudaException(String call, int status) {
        super("CUDA driver", call, status, errorName(status), errorString(status));
    }

    /** Throws {@link CudaException} unless {@code status} is CUDA_SUCCESS. The one error check for driver calls. */
    public static void check(int status, String call) {
        if (status != cuda_h.CUDA_SUCCESS) throw new CudaException(call, status);
    }

    // cuGetErrorName/String work before cuInit and without a GPU; they only need libcuda itself.
    static String errorName(int status) {
        return describe(status, true);
    }

    static String errorString(int status) {
        return describe(status, false);
    }

    private static String describe(int status, boolean name) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            int r = name ? cuda_h.cuGetErrorName(status, out) : cuda_h.cuGetErrorString(status, out);
            MemorySegment s = out.get(ADDRESS, 0);
            if (r != cuda_h.CUDA_SUCCESS || s.equals(MemorySegment.NULL)) return name ? "CUresult " + status : "unrecognised CUresult";
            return s.reinterpret(1024).getString(0);
        } catch (RuntimeException e) {
            return name ? "CUresult " + status : "(no message: " + e.getMessage() + ")";
        }
    }
}
