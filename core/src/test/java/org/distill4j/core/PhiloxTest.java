package org.distill4j.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class PhiloxTest {
    /** Random123's known-answer vector for philox4x32-10 with counter 0 and key 0. */
    @Test
    void knownAnswerForZeroCounterAndKey() {
        int[] expected = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8};
        for (int i = 0; i < 4; i++) assertEquals(expected[i], Philox.word(0, i), "word " + i);
    }

    @Test
    void uniformIsInRangeAndBalanced() {
        double sum = 0;
        int n = 200_000;
        for (int i = 0; i < n; i++) {
            float u = Philox.uniform(42, i);
            assertTrue(u >= 0 && u < 1);
            sum += u;
        }
        assertEquals(0.5, sum / n, 0.005);
    }

    @Test
    void erfMatchesKnownValues() {
        assertEquals(0.5204998778130465, SpecialFunctions.erf(0.5), 1e-15);
        assertEquals(0.8427007929497149, SpecialFunctions.erf(1), 1e-15);
        assertEquals(-0.9953222650189527, SpecialFunctions.erf(-2), 1e-15);
        assertEquals(2.209049699858544e-05, SpecialFunctions.erfc(3), 1e-18);
        assertEquals(1.5374597944280349e-12, SpecialFunctions.erfc(5), 1e-24);
        assertEquals(0.0, SpecialFunctions.erf(0), 0);
    }
}
