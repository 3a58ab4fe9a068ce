package org.distill4j.bench;

import java.util.Arrays;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import org.distill4j.bindings.kernels.DistillKernels;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.cuda.DeviceBuffer;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.loss.Divergence;

/**
 * GPU benchmark of the fused distillation loss (Hinton KL, T = 4, alpha = 0.9, labels, gradient in
 * place over the student) at 16384 rows and C in {1k, 8k, 32k, 128k, 256k}, next to a
 * device-to-device copy of the same bytes in the same run. Bytes moved per evaluation: student and
 * teacher read, gradient written = 12 x rows x C. Median of 7 timed repeats of 10 evaluations
 * (CUDA events; a sweep's variants: median of 5 x 3). Run on the GPU machine:
 *   bash .device/on-device.sh java org.distill4j.bench.GpuLossBench [--divergence=NAME] [--sweep[=REGIME,...]] [rows] [C ...]
 * --divergence=reverse-kl|jsd|mse times that soft term instead (JSD with beta 0.5; reverse KL and JSD run the _pg kernels);
 * --sweep also times every launch variant (regime, cluster size, blocks per SM, staged bytes, threads a block);
 * --sweep=pipe,cluster only those regimes' (block, cluster, reread, pipe).
 * Prints per C: "loss C=<C>: <GB/s> GB/s, <x>% of copy (<GB/s> GB/s), <ms> ms", then the same with the
 * normalizer counted by the kernel (labels and normalizer 0).
 */
public final class GpuLossBench {
    private GpuLossBench() {}

    public static void main(String[] args) {
        // --divergence=jsd: time that divergence instead of KL (reverse KL and JSD run the _pg kernels);
        // --sweep: also time every launch variant; --sweep=pipe,cluster: only those regimes' variants
        Divergence divergence = Divergence.KL;
        boolean sweep = false;
        Set<String> sweepRegimes = new LinkedHashSet<>(DistillKernels.REGIMES);
        int options = 0;
        for (; options < args.length && args[options].startsWith("--"); options++) {
            String option = args[options];
            if (option.startsWith("--divergence=")) {
                divergence = Divergence.parse(option.substring("--divergence=".length()));
            } else if (option.equals("--sweep")) {
                sweep = true;
            } else if (option.startsWith("--sweep=")) {
                sweep = true;
                Set<String> asked = new LinkedHashSet<>(List.of(option.substring("--sweep=".length()).split(",")));
                for (String r : asked) if (!sweepRegimes.contains(r)) throw new IllegalArgumentException("--sweep: unknown regime '" + r + "', expected " + sweepRegimes);
                sweepRegimes = asked;
            } else {
                throw new IllegalArgumentException("unknown option '" + option + "': expected --divergence=kl|reverse-kl|jsd|mse, --sweep or --sweep=REGIME,...");
            }
        }
        args = Arrays.copyOfRange(args, options, args.length);
        int rows = args.length > 0 ? Integer.parseInt(args[0]) : 16384;
        int[] classes = args.length > 1 ? Arrays.stream(args, 1, args.length).mapToInt(Integer::parseInt).toArray()
            : new int[] {1000, 8000, 32000, 128000, 256000};
        try (CudaBackend gpu = CudaBackend.create(0)) {
            System.out.println("device: " + gpu.context().device() + "; divergence " + divergence.cliName());
            warmUp(gpu);
            for (int c : classes) {
                try (Tensor s = gpu.empty(DType.F32, rows, c); Tensor t = gpu.empty(DType.F32, rows, c); Tensor y = gpu.empty(DType.I64, rows);
                     Tensor loss = gpu.empty(DType.F32, 1)) {
                    gpu.uniform(s, -5, 5, 1, 0);
                    gpu.uniform(t, -5, 5, 2, 0);
                    long[] labels = new long[rows];
                    for (int r = 0; r < rows; r++) labels[r] = (r * 7919L) % c;
                    y.copyFrom(labels);
                    DistillationLoss cfg = new DistillationLoss(divergence, 4f, 0.9f, 0.5f, -100);
                    long bytes = 12L * rows * c;
                    DeviceBuffer sb = new DeviceBuffer(s.data(), s.byteSize()), tb = new DeviceBuffer(t.data(), t.byteSize());
                    Runnable lossWork = () -> gpu.distillationLoss(s, t, y, cfg, rows, loss, s);
                    // The copy baseline moves the same bytes: t -> s (8RC) and half of t -> s again (4RC).
                    Runnable copyWork = () -> {
                        gpu.context().copy(sb, 0, tb, 0, tb.byteSize());
                        gpu.context().copy(sb, 0, tb, 0, tb.byteSize() / 2);
                    };
                    double lossMs = median(gpu, lossWork, 7, 10, 300), copyMs = median(gpu, copyWork, 7, 10, 300);
                    double lossGBs = bytes / lossMs / 1e6, copyGBs = bytes / copyMs / 1e6;
                    System.out.printf("loss C=%d: %.1f GB/s, %.1f%% of copy (%.1f GB/s), %.3f ms [%s]%n", c, lossGBs, 100 * lossGBs / copyGBs, copyGBs, lossMs,
                        gpu.distillPlan(rows, c, DType.F32));
                    // the same with the normalizer counted by the kernel (labels, normalizer 0: a grid barrier in the launch)
                    double countedMs = median(gpu, () -> gpu.distillationLoss(s, t, y, cfg, 0, loss, s), 7, 10, 50);
                    System.out.printf("loss C=%d, normalizer counted in the launch: %.1f GB/s, %.1f%% of copy, %.3f ms%n", c, bytes / countedMs / 1e6,
                        100 * bytes / countedMs / 1e6 / copyGBs, countedMs);
                    if (sweep) {
                        // Every launch variant the planner chooses among, same data, same copy baseline:
                        // regime x cluster size x blocks per SM x most staged bytes a block (distinct plans only).
                        Set<DistillKernels.Plan> seen = new LinkedHashSet<>();
                        for (String regime : sweepRegimes) {
                            for (int cl : DistillKernels.clusterSizes(regime)) {
                                for (int perSm : new int[] {2, 0}) {
                                    for (long stage : stagedBytes(regime)) {
                                        for (int threads : perSm == 0 ? new int[] {0, 64, 128, 256, 512} : new int[] {0}) {
                                            try {
                                                seen.add(gpu.distillPlans().explicit(regime, cl, perSm, rows, c, 4, stage, threads));
                                            } catch (IllegalArgumentException notHere) {
                                                // the regime cannot run this shape
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        for (DistillKernels.Plan plan : seen) {
                            // the host path is JIT-compiled by now (the planned run above): 50 ms of warm-up
                            double ms = median(gpu, () -> gpu.distillationLoss(s, t, y, cfg, rows, loss, s, plan), 5, 3, 50);
                            System.out.printf("  variant C=%d %s cl=%d blocks=%d threads=%d staged=%d/%d: %.1f GB/s, %.1f%% of copy, %.3f ms%n", c, plan.regime(),
                                plan.clusterSize(), plan.blocks(), plan.threads(), plan.staged(), plan.chunk(), bytes / ms / 1e6, 100 * bytes / ms / 1e6 / copyGBs, ms);
                        }
                    }
                }
            }
        }
    }

    /**
     * The most staged bytes a block the sweep tries: pipe and split count both buffers; split's
     * default (all the device offers) is 16 KiB a buffer, and these make slices of 4,096, 2,048 and
     * 1,024 fp32 columns beside it.
     */
    private static long[] stagedBytes(String regime) {
        return switch (regime) {
            case "pipe" -> new long[] {Long.MAX_VALUE, 192 * 1024, 128 * 1024};
            case "split" -> new long[] {Long.MAX_VALUE, 64 * 1024, 16 * 1024, 128 * 1024};
            default -> new long[] {Long.MAX_VALUE, 96 * 1024, 64 * 1024};
        };
    }

    /** About a second of copies first, so that the first C is not measured while the GPU clocks up. */
    private static void warmUp(CudaBackend gpu) {
        try (Tensor a = gpu.empty(DType.F32, 1 << 28); Tensor b = gpu.empty(DType.F32, 1 << 28)) {
            DeviceBuffer ab = new DeviceBuffer(a.data(), a.byteSize()), bb = new DeviceBuffer(b.data(), b.byteSize());
            long end = System.nanoTime() + 1_000_000_000L;
            while (System.nanoTime() < end) gpu.context().timeMillis(10, () -> gpu.context().copy(ab, 0, bb, 0, bb.byteSize()));
        }
    }

    /**
     * Median over {@code repeats} timings of {@code inner} back-to-back evaluations (CUDA events), in
     * ms per evaluation, after {@code warmUpMs} of warm-up: 300 for the first runs, so the JIT has
     * compiled the host path (cold, it made the first C measured host-bound: 1k columns 0.20 ms an
     * evaluation cold, 0.11 ms warm).
     */
    private static double median(CudaBackend gpu, Runnable work, int repeats, int inner, long warmUpMs) {
        long end = System.nanoTime() + warmUpMs * 1_000_000L;
        do gpu.context().timeMillis(3, work); while (System.nanoTime() < end);
        double[] ms = new double[repeats];
        for (int i = 0; i < ms.length; i++) ms[i] = gpu.context().timeMillis(inner, work) / inner;
        Arrays.sort(ms);
        return ms[ms.length / 2];
    }
}
