package org.distill4j.bindings;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.distill4j.bindings.abi.CFunction;
import org.distill4j.bindings.abi.HeaderSpec;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/** Every bound function resolves in the real shared library (dlopen works without a GPU). */
class SymbolResolutionTest {
    @TestFactory
    List<DynamicTest> everyBoundFunctionResolves() {
        return BoundHeaders.all().stream().map(spec -> DynamicTest.dynamicTest(spec.library().soname(), () -> check(spec))).toList();
    }

    private static void check(HeaderSpec spec) {
        NativeLibrary lib = NativeLibraries.forBindings(spec.library());
        if (!lib.isLoaded()) {
            String why = lib.failure().orElseThrow().getMessage();
            System.out.println("symbols: SKIPPED " + spec.library().soname() + ": " + why.substring(0, Math.min(160, why.length())));
            Assumptions.abort(spec.library().soname() + " not available here: " + why);
        }
        List<String> missing = spec.functions().stream().map(CFunction::name).filter(n -> lib.find(n).isEmpty()).toList();
        assertEquals(List.of(), missing, "symbols missing from " + lib.path().orElseThrow());
        System.out.println("symbols: " + spec.functions().size() + "/" + spec.functions().size() + " of " + spec.header()
            + " resolve in " + lib.path().orElseThrow());
    }
}
