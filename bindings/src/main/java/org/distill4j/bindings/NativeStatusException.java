package org.distill4j.bindings;

/**
 * A native call returned a non-success status. Carries the library's own name for the status
 * (e.g. {@code CUDA_ERROR_OUT_OF_MEMORY}) and its own message, and the call that returned it.
 */
public abstract class NativeStatusException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final String call;
    private final int status;
    private final String statusName;

    protected NativeStatusException(String library, String call, int status, String statusName, String statusMessage) {
        super(call + " failed: " + statusName + " (" + status + "): " + statusMessage + " [" + library + "]");
        this.call = call;
        this.status = status;
        this.statusName = statusName;
    }

    /** The C function that failed. */
    public String call() { return call; }

    /** The numeric status it returned. */
    public int status() { return status; }

    /** The library's name for the status, e.g. CUBLAS_STATUS_NOT_INITIALIZED. */
    public String statusName() { return statusName; }
}
