package org.distill4j.bindings.dnnl;

import org.distill4j.bindings.NativeStatusException;

/** A oneDNN call returned something other than dnnl_success. */
public final class DnnlException extends NativeStatusException {
    private static final long serialVersionUID = 1L;

    public DnnlException(String call, int status) {
        super("oneDNN", call, status, name(status), message(status));
    }

    /** Throws {@link DnnlException} unless {@code status} is dnnl_success. */
    public static void check(int status, String call) {
        if (status != dnnl_h.dnnl_success) throw new DnnlException(call, status);
    }

    // oneDNN's C API has no status-to-text function outside dnnl_debug.h; these are dnnl_types.h's own names and comments.
    static String name(int status) {
        return switch (status) {
            case dnnl_h.dnnl_out_of_memory -> "dnnl_out_of_memory";
            case dnnl_h.dnnl_invalid_arguments -> "dnnl_invalid_arguments";
            case dnnl_h.dnnl_unimplemented -> "dnnl_unimplemented";
            case dnnl_h.dnnl_last_impl_reached -> "dnnl_last_impl_reached";
            case dnnl_h.dnnl_runtime_error -> "dnnl_runtime_error";
            case dnnl_h.dnnl_not_required -> "dnnl_not_required";
            case dnnl_h.dnnl_invalid_graph -> "dnnl_invalid_graph";
            case dnnl_h.dnnl_invalid_graph_op -> "dnnl_invalid_graph_op";
            case dnnl_h.dnnl_invalid_shape -> "dnnl_invalid_shape";
            case dnnl_h.dnnl_invalid_data_type -> "dnnl_invalid_data_type";
            default -> "dnnl_status_t " + status;
        };
    }

    private static String message(int status) {
        return switch (status) {
            case dnnl_h.dnnl_out_of_memory -> "the operation failed due to an out-of-memory condition";
            case dnnl_h.dnnl_invalid_arguments -> "the operation failed because of incorrect function arguments";
            case dnnl_h.dnnl_unimplemented -> "the requested functionality is not implemented";
            case dnnl_h.dnnl_last_impl_reached -> "the last available implementation is reached";
            case dnnl_h.dnnl_runtime_error -> "the primitive or engine failed on execution";
            case dnnl_h.dnnl_not_required -> "the queried element is not required for the given primitive";
            default -> "see oneDNN's documentation of dnnl_status_t";
        };
    }
}
