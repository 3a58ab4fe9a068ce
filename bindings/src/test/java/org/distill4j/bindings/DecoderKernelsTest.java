package org.distill4j.bindings;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.util.List;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.distill4j.bindings.kernels.DecoderKernels;
import org.distill4j.kernels.KernelImage;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/** DecoderKernels launches exactly the kernels decoder.cu defines, and (with nvcc) the fatbin holds every one of them. */
class DecoderKernelsTest {
    @Test
    void theLaunchersNameEveryKernelOfDecoderCu() throws Exception {
        String source = Files.readString(Headers.moduleDir().resolve("../native/src/main/cuda/decoder.cu").normalize());
        Matcher m = Pattern.compile("extern \"C\" __global__ void (\\w+)\\(").matcher(source);
        TreeSet<String> defined = new TreeSet<>();
        while (m.find()) defined.add(m.group(1));
        assertEquals(defined, new TreeSet<>(DecoderKernels.KERNELS), "decoder.cu's kernels vs DecoderKernels.KERNELS");
    }

    @Test
    void everyDecoderKernelIsInTheFatbin() {
        Assumptions.assumeTrue(KernelImage.built(), "this build has no nvcc: " + KernelImage.notBuiltReason());
        List<String> built = KernelImage.kernelNames();
        for (String name : DecoderKernels.KERNELS) assertTrue(built.contains(name), name + " is launched but not in the fatbin: " + built);
    }
}
