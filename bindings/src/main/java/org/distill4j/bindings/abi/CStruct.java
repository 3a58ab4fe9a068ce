package org.distill4j.bindings.abi;

import java.lang.foreign.StructLayout;

/** A bound struct: its C typedef name and the layout (sizes, offsets, padding) Java uses for it. */
public record CStruct(String name, StructLayout layout) {}
