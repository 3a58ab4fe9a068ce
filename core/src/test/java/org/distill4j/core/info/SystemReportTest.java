package org.distill4j.core.info;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

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
        assertEquals(5, r.libraries().size());
        for (SystemReport.Library l : r.libraries()) {
            assertTrue(l.found() || !l.searched().isEmpty() || l.detail().contains("needs"), l.toString());
        }
        assertTrue(r.lines().getFirst().startsWith("Distill4J "));
    }
}
