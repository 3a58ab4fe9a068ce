package org.distill4j.bindings;

/** Shared plumbing for the generated header classes. */
@SuppressWarnings("restricted") // FFM: reads NUL-terminated strings that native libraries return
public final class Downcalls {
    private Downcalls() {}

    /**
     * The NUL-terminated C string at {@code ptr} (a zero-length segment a downcall returned), or
     * {@code fallback} when it is NULL. Reads at most 64 KiB.
     */
    public static String cString(java.lang.foreign.MemorySegment ptr, String fallback) {
        if (ptr.equals(java.lang.foreign.MemorySegment.NULL)) return fallback;
        return ptr.reinterpret(65536).getString(0);
    }

    /**
     * What a generated wrapper throws when {@code invokeExact} throws. Unchecked exceptions and
     * errors pass through unchanged: a closed arena's {@code IllegalStateException}, a missing
     * library's {@link NativeLibraryException}. A checked throwable cannot come out of a downcall
     * handle, so reaching the last line is a bug in the bindings.
     */
    public static RuntimeException rethrow(String function, Throwable t) {
        if (t instanceof RuntimeException r) return r;
        if (t instanceof Error e) throw e;
        return new IllegalStateException("unexpected checked exception from downcall " + function, t);
    }
}
