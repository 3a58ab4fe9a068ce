package org.distill4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import org.distill4j.core.Tensor;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.io.Npy;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/** The PyTorch interop fixture on CUDA: eval-mode logits within 1e-4 (strict FP32) of PyTorch's. Tag "gpu". */
@Tag("gpu")
class GpuModelTest {
    @Test
    void reproducesPyTorchLogitsOnTheGpu() throws Exception {
        CudaBackend gpu = Gpus.openOrSkip();
        Path dir = Path.of(System.getProperty("basedir", "tests")).resolve("../core/src/test/resources/fixtures/model").normalize();
        try (gpu; Model m = ModelSpec.read(dir.resolve("cnn.json")).build(gpu, 0); Arena arena = Arena.ofShared()) {
            gpu.setMathMode(CudaBackend.MathMode.STRICT_FP32);
            m.load(dir.resolve("cnn.safetensors"));
            Npy.Array x = Npy.read(dir.resolve("input.npy"));
            float[] expected = Npy.read(dir.resolve("logits.npy")).toFloats();
            try (Tensor tx = gpu.fromArray(x.toFloats(), x.shape())) {
                float[] got = m.forward(new Layer.Pass(gpu, arena, false, 0, 0), tx).toFloatArray();
                for (int i = 0; i < got.length; i++) assertEquals(expected[i], got[i], 1e-4 * Math.max(1, Math.abs(expected[i])), "logit " + i);
            }
        }
    }
}
