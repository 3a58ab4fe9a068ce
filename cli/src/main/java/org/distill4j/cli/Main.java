package org.distill4j.cli;

import java.io.PrintWriter;
import java.util.concurrent.Callable;
import org.distill4j.core.cpu.CpuEngine;
import org.distill4j.core.info.SystemReport;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code distill}: the command-line tool. Each subcommand is a thin layer over the library.
 * Exit codes: 0 success, 1 the work failed, 2 bad input or usage (one line, no stack trace
 * unless {@code --verbose}).
 */
@Command(name = "distill", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
    description = "Knowledge distillation for Java, on CUDA or the CPU.",
    subcommands = {DemoCommand.class, TrainCommand.class, DistillCommand.class, InfoCommand.class, LossCommand.class, PredictCommand.class, EvalCommand.class, BenchCommand.class, TokenizeCommand.class,
        GenerateCommand.class,
        CommandLine.HelpCommand.class},
    footer = {"", "Examples:", "  distill demo            knowledge distillation in a minute, nothing to download",
        "  distill info            what this machine offers (libraries, GPUs, kernels)",
        "  distill loss --student s.npy --teacher t.npy --labels y.npy --temperature 4 --alpha 0.9",
        "  distill predict --model cnn.json --weights cnn.safetensors --input x.npy --output logits.npy",
        "  distill eval --model cnn.json --weights cnn.safetensors --data npy:x.npy,y.npy",
        "  distill info --model cnn.json",
        "  distill tokenize --tokenizer gpt2/ --output train.bin book.txt",
        "  distill generate --model ./student --prompt 'Call me Ishmael.' --max-new-tokens 50",
        "  distill eval --model ./student --data tokens:val.bin --seq-len 256",
        "  distill bench kd-step --teacher t.json --student s.json --batch 256 --steps 50"})
public final class Main implements Callable<Integer> {
    @Option(names = "--verbose", description = "print stack traces on errors", scope = CommandLine.ScopeType.INHERIT)
    boolean verbose;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    /**
     * The CPU backend's gemm engine for this run: sets {@code distill4j.cpu.engine} before any
     * command runs (CpuBlas reads it on first use). An engine that is not present is bad input.
     */
    @Option(names = "--cpu-engine", paramLabel = "ENGINE", scope = CommandLine.ScopeType.INHERIT,
        description = "CPU backend engine (gemm; on onednn also convolution and pooling): onednn, openblas or java (default: the fastest present; see distill info)")
    void cpuEngine(String name) {
        CpuEngine engine;
        try {
            engine = CpuEngine.parse(name);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--cpu-engine: unknown engine '" + name + "', expected onednn, openblas or java");
        }
        if (!engine.available()) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--cpu-engine " + engine.key() + ": not available here: "
                + engine.unavailableReason().lines().findFirst().orElse(""));
        }
        System.setProperty(CpuEngine.PROPERTY, engine.key());
    }

    /** Instantiated by {@link #run}; public for picocli and for embedding the tool. */
    public Main() {}

    @Override
    public Integer call() {
        spec.commandLine().usage(spec.commandLine().getOut());
        return 0;
    }

    public static void main(String[] args) {
        // DJL (the tokenizers binding) logs through SLF4J; without a logging backend SLF4J prints three warning lines.
        if (System.getProperty("slf4j.provider") == null) {
            System.setProperty("slf4j.provider", "org.slf4j.helpers.NOP_FallbackServiceProvider");
            System.setProperty("slf4j.internal.verbosity", "WARN");
        }
        System.exit(run(args, new PrintWriter(System.out, true), new PrintWriter(System.err, true)));
    }

    /** Runs the tool as {@code main} would, writing to the given streams; returns the exit code. */
    public static int run(String[] args, PrintWriter out, PrintWriter err) {
        CommandLine cli = new CommandLine(new Main());
        cli.setOut(out);
        cli.setErr(err);
        cli.setExecutionExceptionHandler((e, cmd, parsed) -> {
            boolean verbose = parsed.matchedOption("--verbose") != null
                || (parsed.subcommand() != null && parsed.subcommand().matchedOption("--verbose") != null);
            if (verbose) e.printStackTrace(err);
            String msg = e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage();
            err.println(cmd.getCommandSpec().qualifiedName() + ": " + msg.lines().findFirst().orElse(msg)); // "distill bench predict: ..."
            return e instanceof IllegalArgumentException ? 2 : 1;  // bad input: 2; the work failed: 1
        });
        cli.setParameterExceptionHandler((e, a) -> {
            err.println("distill: " + e.getMessage() + " (see distill --help)");
            return 2;
        });
        return cli.execute(args);
    }

    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            return new String[] {"Distill4J " + SystemReport.version()};
        }
    }
}
