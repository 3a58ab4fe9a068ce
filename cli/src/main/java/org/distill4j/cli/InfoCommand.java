package org.distill4j.cli;

import java.util.concurrent.Callable;
import org.distill4j.core.info.SystemReport;
import picocli.CommandLine;
import picocli.CommandLine.Command;

/** {@code distill info}: the JVM, native libraries, CUDA driver and GPUs, and our kernels. Exit 0 without a GPU. */
@Command(name = "info", mixinStandardHelpOptions = true,
    description = "Show what this machine offers Distill4J: JDK, native libraries (path and version, or where we looked), "
        + "CUDA driver and GPUs, and whether the CUDA kernels were built.",
    footer = {"", "Examples:", "  distill info", "  distill info --model cnn.json", "  distill info --model ./Qwen3-0.6B"})
final class InfoCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @CommandLine.Option(names = "--model", paramLabel = "SPEC.json|DIR", description = "instead: check a model spec and print its layers, parameter count and "
        + "output shape; or describe a Hugging Face decoder folder (family, parameters, layers, heads, KV heads, vocabulary, context length, dtype on disk)")
    java.nio.file.Path model;

    @Override
    public Integer call() throws Exception {
        var out = spec.commandLine().getOut();
        if (model != null && java.nio.file.Files.isDirectory(model)) {
            out.println("model " + model + ":");
            org.distill4j.core.lm.DecoderModel.summary(model).lines().forEach(line -> out.println("  " + line));
            return 0;
        }
        if (model != null) {
            org.distill4j.core.nn.ModelSpec s = org.distill4j.core.nn.ModelSpec.read(model);
            try (org.distill4j.core.nn.Model m = s.build(org.distill4j.core.cpu.CpuBackend.get(), 0)) {
                out.println("model " + model + ": input " + java.util.Arrays.toString(s.input()) + ", output " + java.util.Arrays.toString(m.outputShape()));
                for (org.distill4j.core.nn.Parameter p : m.parameters()) {
                    out.printf("  %-28s %s%s%n", p.name(), p.value().dtype(), java.util.Arrays.toString(p.value().shape()) + (p.trainable() ? "" : " (buffer)"));
                }
                out.printf("parameters: %,d%n", m.parameterCount());
            }
            return 0;
        }
        SystemReport.gather().lines().forEach(out::println);
        return 0;
    }
}
