package org.distill4j.core.lm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Locale;
import java.util.stream.Stream;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.io.Safetensors;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Parameter;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.junit.jupiter.api.io.TempDir;

/**
 * A frozen decoder run in bfloat16 ({@code DecoderModel.load(backend, dir, BF16)}): its logits
 * against PyTorch computing the same recipe (make_lm_bf16_fixtures.py: weights and every matrix
 * product's input rounded to bf16, float32 sums), against the float32 model, and what such a model
 * refuses (gradients, saving).
 */
class DecoderBf16Test {
    private static final String[] MODELS = {"gpt2", "qwen3", "llama-tied-rope3-bf16"};
    /** Against PyTorch's bf16-compute logits: the same roundings, float32 sums in another order (measured 8e-8 to 1.5e-7, 2026-12-06). */
    private static final double SAME_RECIPE = 1e-5;
    private final Backend cpu = CpuBackend.get();

    @TempDir
    Path tmp;

    private static float[] logits(DecoderModel m, long[] ids, int b, long t) {
        try (Arena a = Arena.ofShared()) {
            return m.forward(new Layer.Pass(m.backend(), a, false, 0, 0), ids, b, t, null, null, null).toFloatArray();
        }
    }

    @TestFactory
    Stream<DynamicTest> logitsMatchPyTorchsBf16Recipe() {
        System.out.println("DecoderBf16Test: gemm engine " + CpuBlas.provider());
        return Arrays.stream(MODELS).map(name -> DynamicTest.dynamicTest(name, () -> {
            Path dir = DecoderFixtureTest.FIXTURES.resolve(name);
            try (DecoderModel bf = DecoderModel.load(cpu, dir, DType.BF16); DecoderModel fp = DecoderModel.load(cpu, dir);
                 Safetensors ref = Safetensors.open(dir.resolve("reference.safetensors"));
                 Safetensors recipe = Safetensors.open(dir.resolve("bf16-compute.safetensors"))) {
                long[] shape = ref.entries().get("input_ids").shape();
                int b = (int) shape[0];
                long t = shape[1];
                long[] ids;
                float[] want;
                try (Tensor i = cpu.empty(DType.I64, shape); Tensor l = cpu.empty(DType.F32, recipe.entries().get("logits").shape())) {
                    ref.copyInto("input_ids", i);
                    recipe.copyInto("logits", l);
                    ids = i.toLongArray();
                    want = l.toFloatArray();
                }
                assertEquals(DType.BF16, bf.weightDtype());
                assertEquals(DType.BF16, bf.lmHead().value().dtype(), "the lm_head is held in bf16");
                float[] got = logits(bf, ids, b, t), full = logits(fp, ids, b, t);
                int v = (int) bf.config().vocab();
                double recipeError = DecoderFixtureTest.rowError(got, want, v, null), vsFloat32 = DecoderFixtureTest.rowError(got, full, v, null);
                System.out.printf(Locale.ROOT, "DecoderBf16Test %s: vs PyTorch's bf16 recipe %.2e, vs the float32 model %.2e (relative to a row's max |logit|)%n",
                    name, recipeError, vsFloat32);
                assertTrue(recipeError <= SAME_RECIPE, name + ": bf16 logits differ from PyTorch's bf16 recipe by " + recipeError);
                // Rounding weights and inputs to 8 significant bits moves the logits, but not far: a sanity bound, and proof the bf16 path ran.
                assertTrue(vsFloat32 > 1e-6 && vsFloat32 < 0.05, name + ": bf16 vs float32 logits differ by " + vsFloat32);
            }
        }));
    }

    @Test
    void aBf16ModelIsFrozenAndIsNotSaved() throws Exception {
        Path dir = DecoderFixtureTest.FIXTURES.resolve("gpt2");
        try (DecoderModel m = DecoderModel.load(cpu, dir, DType.BF16)) {
            for (Parameter p : m.parameters()) {
                assertNull(p.grad(), p.name() + " has a gradient buffer in a frozen bf16 model");
                boolean matmul = p.value().rank() == 2 && !p.name().endsWith("wpe.weight");
                assertEquals(matmul ? DType.BF16 : DType.F32, p.value().dtype(), p.name());
            }
            IllegalStateException e = assertThrows(IllegalStateException.class, m::zeroGrad);
            assertTrue(e.getMessage().contains("has no gradients"), e.getMessage());
            e = assertThrows(IllegalStateException.class, () -> m.save(tmp.resolve("out")));
            assertTrue(e.getMessage().contains("is not saved"), e.getMessage());
            try (Arena a = Arena.ofShared()) {
                m.forward(new Layer.Pass(cpu, a, true, 0, 0), new long[] {1, 2, 3, 4}, 1, 4, null, null, null);
                e = assertThrows(IllegalStateException.class, () -> m.backward(cpu.empty(a, DType.F32, 1, 4, m.config().vocab())));
                assertTrue(e.getMessage().contains("has no gradients"), e.getMessage());
            }
        }
    }

    @Test
    void teacherLayersOfABf16TeacherAreItsWeightsWidened() throws Exception {
        // The bf16 fixture's weights are bf16 on disk: widening is exact, so a student copied from the bf16 teacher equals one copied from the float32 load.
        Path dir = DecoderFixtureTest.FIXTURES.resolve("llama-tied-rope3-bf16");
        try (DecoderModel bf = DecoderModel.load(cpu, dir, DType.BF16); DecoderModel fp = DecoderModel.load(cpu, dir);
             DecoderModel a = DecoderModel.fromTeacherLayers(bf, new int[] {1}); DecoderModel b = DecoderModel.fromTeacherLayers(fp, new int[] {1})) {
            for (Parameter p : a.parameters()) {
                assertEquals(DType.F32, p.value().dtype(), p.name());
                assertArrayEquals(b.parameter(p.name()).value().toFloatArray(), p.value().toFloatArray(), p.name());
            }
        }
    }
}
