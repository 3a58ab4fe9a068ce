package org.distill4j.bindings;

import java.util.List;

/**
 * A native library Distill4J needs could not be used: not found anywhere it looked, found but not
 * loadable (usually a library it depends on is missing), or lacking a symbol. The message names
 * the library, every place searched, and what to install.
 */
public final class NativeLibraryException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final NativeLibraries.Library library;
    private final transient List<String> searched;

    public NativeLibraryException(NativeLibraries.Library library, String message, List<String> searched) {
        super(message);
        this.library = library;
        this.searched = List.copyOf(searched);
    }

    public NativeLibraries.Library library() { return library; }

    /** The places searched, in order, each with what was found there. */
    public List<String> searched() { return searched; }
}
