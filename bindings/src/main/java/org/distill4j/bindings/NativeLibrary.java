package org.distill4j.bindings;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.nio.file.Path;
import java.util.Optional;

/**
 * One native library opened with dlopen (never closed: bindings live as long as the process), or
 * the reason it could not be opened. Generated header classes ask it for downcall handles.
 *
 * <p>FFM judgement call: we call dlopen/dlsym/dlerror ourselves instead of using
 * {@code SymbolLookup.libraryLookup}, because only dlerror says <em>which</em> dependency of a
 * found library is missing, and that is the message a user needs.
 */
@SuppressWarnings("restricted") // FFM: reading C strings and binding symbols is this class's job; native access is granted to this module
public final class NativeLibrary {
    private static final Linker LINKER = Linker.nativeLinker();
    private static final int RTLD_NOW = 2;
    private static final MethodHandle DLOPEN = libc("dlopen", FunctionDescriptor.of(ADDRESS, ADDRESS, JAVA_INT));
    private static final MethodHandle DLSYM = libc("dlsym", FunctionDescriptor.of(ADDRESS, ADDRESS, ADDRESS));
    private static final MethodHandle DLERROR = libc("dlerror", FunctionDescriptor.of(ADDRESS));
    private static final MethodHandle SETENV = libc("setenv", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_INT));

    private final NativeLibraries.Library library;
    private final Path path;                      // null when not loaded
    private final MemorySegment handle;          // dlopen handle, NULL when not loaded
    private final NativeLibraryException failure; // why not loaded, null when loaded

    private NativeLibrary(NativeLibraries.Library library, Path path, MemorySegment handle, NativeLibraryException failure) {
        this.library = library;
        this.path = path;
        this.handle = handle;
        this.failure = failure;
    }

    static NativeLibrary missing(NativeLibraries.Library library, NativeLibraryException failure) {
        return new NativeLibrary(library, null, MemorySegment.NULL, failure);
    }

    /**
     * dlopen(name) with RTLD_NOW: a path, or a bare soname for the system loader's search.
     * Returns the handle, or throws IllegalArgumentException carrying dlerror's text.
     */
    static MemorySegment dlopen(String nameOrPath) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment h = (MemorySegment) DLOPEN.invokeExact(arena.allocateFrom(nameOrPath), RTLD_NOW);
            if (h.equals(MemorySegment.NULL)) {
                throw new IllegalArgumentException(dlerror());
            }
            return h;
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /**
     * setenv(name, value, 0) in the C library's environment: sets it unless it is set already (the
     * user's value wins). For settings a native library reads once when it loads.
     */
    static void setenvUnlessSet(String name, String value) {
        try (Arena arena = Arena.ofConfined()) {
            int ignored = (int) SETENV.invokeExact(arena.allocateFrom(name), arena.allocateFrom(value), 0);
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    static NativeLibrary opened(NativeLibraries.Library library, Path path, MemorySegment handle) {
        return new NativeLibrary(library, path, handle, null);
    }

    private static String dlerror() {
        try {
            MemorySegment msg = (MemorySegment) DLERROR.invokeExact();
            return msg.equals(MemorySegment.NULL) ? "unknown dlopen error" : msg.reinterpret(4096).getString(0);
        } catch (Throwable t) {
            return "unknown dlopen error (" + t + ")";
        }
    }

    public NativeLibraries.Library library() { return library; }

    public boolean isLoaded() { return failure == null; }

    /** Where the library was loaded from; empty when it was not loaded. */
    public Optional<Path> path() { return Optional.ofNullable(path); }

    /** Why the library is not loaded; empty when it is. */
    public Optional<NativeLibraryException> failure() { return Optional.ofNullable(failure); }

    /** The address of an exported symbol, or empty when the library lacks it or is not loaded. */
    public Optional<MemorySegment> find(String symbol) {
        if (failure != null) return Optional.empty();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment addr = (MemorySegment) DLSYM.invokeExact(handle, arena.allocateFrom(symbol));
            return addr.equals(MemorySegment.NULL) ? Optional.empty() : Optional.of(addr);
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /**
     * A downcall handle for {@code name}. When the library or the symbol is missing, the handle
     * has the same type but throws {@link NativeLibraryException} when called, so a header class
     * always initialises and only the call that cannot work fails, with a message that says why.
     */
    public MethodHandle downcall(String name, FunctionDescriptor descriptor) {
        Optional<MemorySegment> addr = find(name);
        if (addr.isPresent()) {
            return LINKER.downcallHandle(addr.get(), descriptor);
        }
        NativeLibraryException why = failure != null ? failure
            : new NativeLibraryException(library, library.soname() + " at " + path + " has no symbol " + name
                + " (the library is older than Distill4J needs: " + library.installHint() + ")", java.util.List.of(String.valueOf(path)));
        MethodType type = descriptor.toMethodType();
        MethodHandle thrower = MethodHandles.throwException(type.returnType(), NativeLibraryException.class);
        thrower = MethodHandles.insertArguments(thrower, 0, why);
        return MethodHandles.dropArguments(thrower, 0, type.parameterList());
    }

    /**
     * A downcall handle for C library function {@code name} (the process's default lookup): our
     * dlopen/dlsym and the CPU backend's posix_memalign/free. UnsatisfiedLinkError when libc has no
     * such function.
     */
    public static MethodHandle libc(String name, FunctionDescriptor d) {
        MemorySegment addr = LINKER.defaultLookup().find(name)
            .orElseThrow(() -> new UnsatisfiedLinkError("the C library has no " + name + " (glibc 2.34 or newer is required)"));
        return LINKER.downcallHandle(addr, d);
    }
}
