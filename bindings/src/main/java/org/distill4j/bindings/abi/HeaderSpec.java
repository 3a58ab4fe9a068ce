package org.distill4j.bindings.abi;

import java.util.List;
import org.distill4j.bindings.NativeLibraries;

/** Everything one generated header class declares, for the ABI conformance check. */
public record HeaderSpec(String header, NativeLibraries.Library library, List<CFunction> functions,
                         List<CConstant> constants, List<CStruct> structs) {}
