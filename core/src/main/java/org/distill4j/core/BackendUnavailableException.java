package org.distill4j.core;

/**
 * A backend cannot be created on this machine. The message says why in one line (e.g. "no GPU:
 * CUDA driver (libcuda.so.1) not found; ..."), and the cause, when there is one, carries detail.
 */
public final class BackendUnavailableException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public BackendUnavailableException(String message, Throwable cause) {
        super(message, cause);
    }
}
