#!/usr/bin/env python3
"""PyTorch reference for the fused distillation loss benchmark (Distill4J's GpuLossBench).

The same loss, forward and backward, in PyTorch eager (log_softmax + kl_div + cross_entropy) and
with torch.compile (default and max-autotune), at the same shapes: 16384 rows, C in
{1k, 8k, 32k, 128k, 256k}, T = 4, alpha = 0.9. Prints per C and variant:
  "torch-<variant> C=<C>: <GB/s> GB/s, <ms> ms"  (bytes = 12 x rows x C, as GpuLossBench counts)
Median of 7 repeats of 10 evaluations, CUDA events. Run on the GPU machine (PyTorch with CUDA):
  python3 bench/pytorch/loss_bench.py [rows] [C ...]
On the CPU, the shapes of Distill4J's JMH DistillationLossBenchmark (4096x1000, 512x32000; the
GPU shapes do not fit this machine's memory), wall-clock median of 7 repeats of 3:
  python3 bench/pytorch/loss_bench.py --cpu [--divergence=kl|reverse-kl|jsd] [ROWSxC ...]
(reverse KL: KL(p_student || p_teacher); JSD: TRL GKD's generalized JSD at beta 0.5.)
"""
import math
import statistics
import sys

import torch
import torch.nn.functional as F


def loss_fn(s, t, y, T=4.0, alpha=0.9):
    soft = F.kl_div(F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1), reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, y)
    return alpha * T * T * soft + (1 - alpha) * hard


def reverse_kl_fn(s, t, y, T=4.0, alpha=0.9):
    """KL(p_student || p_teacher): kl_div(input = log q, target = log p)."""
    soft = F.kl_div(F.log_softmax(t / T, dim=-1), F.log_softmax(s / T, dim=-1), reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, y)
    return alpha * T * T * soft + (1 - alpha) * hard


def jsd_fn(s, t, y, T=4.0, alpha=0.9, beta=0.5):
    """Generalized JSD as TRL's GKD computes it: M = beta q + (1 - beta) p in log space,
    beta KL(q || M) + (1 - beta) KL(p || M)."""
    ls, lt = F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1)
    lm = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), dim=0)
    soft = beta * F.kl_div(lm, lt, reduction="batchmean", log_target=True) + (1 - beta) * F.kl_div(lm, ls, reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, y)
    return alpha * T * T * soft + (1 - alpha) * hard


LOSSES = {"kl": loss_fn, "reverse-kl": reverse_kl_fn, "jsd": jsd_fn}


def step(fn, s, t, y):
    s.grad = None
    fn(s, t, y).backward()


def median_ms(fn, s, t, y):
    for _ in range(3):
        step(fn, s, t, y)
    times = []
    for _ in range(7):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            step(fn, s, t, y)
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 10)
    return statistics.median(times)


def median_ms_cpu(fn, s, t, y):
    import time
    for _ in range(2):
        step(fn, s, t, y)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(3):
            step(fn, s, t, y)
        times.append((time.perf_counter() - t0) * 1e3 / 3)
    return statistics.median(times)


def main_cpu(shapes, divergence="kl"):
    print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}, divergence {divergence}")
    fn0 = LOSSES[divergence]
    variants = [("eager", fn0), ("compile", torch.compile(fn0))]
    for shape in shapes or ["4096x1000", "512x32000"]:
        rows, c = (int(v) for v in shape.split("x"))
        s = (torch.rand(rows, c) * 10 - 5).requires_grad_(True)
        t = torch.rand(rows, c) * 10 - 5
        y = torch.arange(rows) * 7919 % c
        for name, fn in variants:
            ms = median_ms_cpu(fn, s, t, y)
            label = name if divergence == "kl" else f"{name} {divergence}"
            print(f"torch-{label} {rows}x{c}: {12 * rows * c / ms / 1e6:.2f} GB/s, {ms:.2f} ms")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--cpu":
        args = sys.argv[2:]
        divergence = "kl"
        if args and args[0].startswith("--divergence="):
            divergence = args.pop(0).split("=", 1)[1]
        main_cpu(args, divergence)
        return
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
    classes = [int(c) for c in sys.argv[2:]] or [1000, 8000, 32000, 128000, 256000]
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    # LOSS_VARIANTS=eager,compile[,compile-max-autotune] (max-autotune adds minutes of tuning per shape).
    import os
    every = {"eager": lambda: loss_fn, "compile": lambda: torch.compile(loss_fn),
             "compile-max-autotune": lambda: torch.compile(loss_fn, mode="max-autotune")}
    variants = [(name, every[name]()) for name in os.environ.get("LOSS_VARIANTS", "eager,compile").split(",")]
    for c in classes:
        s = (torch.rand(rows, c, device="cuda") * 10 - 5).requires_grad_(True)
        t = torch.rand(rows, c, device="cuda") * 10 - 5
        y = torch.arange(rows, device="cuda") * 7919 % c
        for name, fn in variants:
            try:
                ms = median_ms(fn, s, t, y)
                print(f"torch-{name} C={c}: {12 * rows * c / ms / 1e6:.1f} GB/s, {ms:.3f} ms")
            except torch.cuda.OutOfMemoryError:
                print(f"torch-{name} C={c}: out of memory")
                torch.cuda.empty_cache()
        del s, t, y
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
