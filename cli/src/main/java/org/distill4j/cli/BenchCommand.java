package org.distill4j.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** {@code distill bench}: reproducible timings (bench/RESULTS.md quotes only what these and the JMH suites print). */
@Command(name = "bench", mixinStandardHelpOptions = true, subcommands = {KdStepBench.class, PredictBench.class, LmStepBench.class, LmKdStepBench.class},
    description = "Benchmarks: kd-step times full distillation steps on synthetic data; predict measures the embedded Predictor; lm-step times a decoder's forward+backward; lm-kd-step times whole decoder distillation steps.",
    footer = {"", "Example:", "  distill bench kd-step --teacher bench/specs/mlp-teacher.json --student bench/specs/mlp-student.json --batch 256 --steps 50"})
final class BenchCommand implements Runnable {
    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        spec.commandLine().usage(spec.commandLine().getOut());
    }
}
