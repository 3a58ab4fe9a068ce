package org.distill4j.cli;

import java.util.concurrent.Callable;
import org.distill4j.core.info.SystemReport;
import picocli.CommandLine;
import picocli.CommandLine.Command;

/** {@code distill info}: the JVM, native libraries, CUDA driver and GPUs, and our kernels. Exit 0 without a GPU. */
@Command(name = "info", mixinStandardHelpOptions = true,
    description = "Show what this machine offers Distill4J: JDK, native libraries (path and version, or where we looked), "
        + "CUDA driver and GPUs, and whether the CUDA kernels were built.",
    footer = {"", "Example:", "  distill info"})
final class InfoCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public Integer call() {
        SystemReport.gather().lines().forEach(spec.commandLine().getOut()::println);
        return 0;
    }
}
