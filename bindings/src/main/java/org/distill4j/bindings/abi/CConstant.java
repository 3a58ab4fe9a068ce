package org.distill4j.bindings.abi;

/** A bound constant (enumerator or macro) and the value the Java binding holds. */
public record CConstant(String name, long value) {}
