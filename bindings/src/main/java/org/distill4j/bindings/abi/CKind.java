package org.distill4j.bindings.abi;

import static java.lang.foreign.ValueLayout.*;

import java.lang.foreign.MemoryLayout;

/**
 * The ABI class of a C type as a binding declares it: its size, gcc's type class
 * ({@code __builtin_classify_type}: 1 integer or enum, 5 pointer, 8 real) and the FFM layout that
 * carries it. The conformance check asserts all three against the real header.
 */
public enum CKind {
    BYTE(1, 1, JAVA_BYTE), SHORT(2, 1, JAVA_SHORT), INT(4, 1, JAVA_INT), LONG(8, 1, JAVA_LONG),
    FLOAT(4, 8, JAVA_FLOAT), DOUBLE(8, 8, JAVA_DOUBLE), POINTER(8, 5, ADDRESS),
    /**
     * An integer device address (CUdeviceptr) that Java passes as ADDRESS: the C side is an 8-byte
     * integer, and x86-64/AArch64 pass pointers and 64-bit integers in the same registers.
     */
    DEVICE_POINTER(8, 1, ADDRESS);

    private final int size;
    private final int gccTypeClass;
    private final MemoryLayout layout;

    CKind(int size, int gccTypeClass, MemoryLayout layout) {
        this.size = size;
        this.gccTypeClass = gccTypeClass;
        this.layout = layout;
    }

    public int size() { return size; }
    public int gccTypeClass() { return gccTypeClass; }
    public MemoryLayout layout() { return layout; }
}
