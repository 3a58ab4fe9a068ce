package org.distill4j.bindings.abi;

import java.lang.foreign.FunctionDescriptor;
import java.util.List;

/**
 * A bound C function: its exported name, its C return and parameter types as the binding declares
 * them, and the FunctionDescriptor the downcall handle is made from.
 *
 * @param returnKind null for void
 */
public record CFunction(String name, String returnType, CKind returnKind, List<Param> params, FunctionDescriptor descriptor) {
    public record Param(String type, CKind kind) {}
}
