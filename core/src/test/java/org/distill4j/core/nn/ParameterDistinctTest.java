package org.distill4j.core.nn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;

import java.util.List;
import org.distill4j.core.DType;
import org.distill4j.core.cpu.CpuBackend;
import org.junit.jupiter.api.Test;

/** What the trainer hands the optimizer: each shared (tied) tensor once, under its first name, in order. */
class ParameterDistinctTest {
    @Test
    void aTiedWeightIsListedOnce() {
        var cpu = CpuBackend.get();
        Parameter embedding = new Parameter("wte.weight", cpu.zeros(DType.F32, 4, 3), true);
        Parameter other = new Parameter("ln.weight", cpu.zeros(DType.F32, 3), true);
        Parameter head = embedding.renamed("lm_head.");  // another name for the same tensor, as a tied lm_head
        try {
            List<Parameter> distinct = Parameter.distinct(List.of(embedding, other, head, other));
            assertEquals(List.of(embedding, other), distinct);
            assertSame(embedding.grad(), head.grad(), "one gradient buffer for both uses");
        } finally {
            embedding.close();
            other.close();
        }
    }
}
