package org.distill4j.core.info;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.distill4j.bindings.NativeLibraries;
import org.junit.jupiter.api.Test;

class SystemReportTest {
    @Test
    void versionNumbersDecodeLikeTheLibrariesDo() {
        assertEquals("9.24.0", SystemReport.formatCudnn(92400));
        assertEquals("13.1.1", SystemReport.formatCublas(130101));
    }

    @Test
    void everyLibraryIsReportedFoundOrWithWhereWeLooked() {
        SystemReport r = SystemReport.gather();
        assertEquals(NativeLibraries.Library.values().length, r.libraries().size());
        assertTrue(r.lines().stream().anyMatch(line -> line.startsWith("cpu:") && line.contains("fused loss on the ")), String.join("\n", r.lines()));
        for (SystemReport.Library l : r.libraries()) {
            assertTrue(l.found() || !l.searched().isEmpty() || l.detail().contains("needs"), l.toString());
        }
        assertTrue(r.lines().getFirst().startsWith("Distill4J "));
    }
}
