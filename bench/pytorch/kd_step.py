#!/usr/bin/env python3
"""PyTorch reference for `distill bench kd-step`: exactly the same distillation step on the same
specs (bench/specs/*.json, built by spec_model.py): teacher forward in eval mode under no_grad,
student forward in train mode, loss = alpha*T^2*KL(p_t || p_s) (batchmean) + (1-alpha)*CE, backward,
AdamW (lr 1e-4, weight decay 1e-4, constant), synthetic data of the spec's input shape. TF32 on
for matmuls and convolutions on the GPU, as Distill4J's default. Variants: eager, torch.compile
(default) and torch.compile(mode="max-autotune") of the step's loss function.

After --warmup steps, --repeats runs of --steps steps are each timed between synchronisations;
prints per variant
  kd-step[<variant>]: <median samples per second> samples/s  (spread ...)
and, with one variant, the last line is "kd-step: <samples/s> samples/s" like Distill4J's.

  python3 bench/pytorch/kd_step.py --teacher bench/specs/mlp-teacher.json --student bench/specs/mlp-student.json \\
      --batch 256 --steps 50 [--device cpu|cuda] [--variants eager,compile,max-autotune] [--threads N]
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spec_model  # noqa: E402


def kd_loss(s, t, y, T, alpha):
    soft = F.kl_div(F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1), reduction="batchmean", log_target=True)
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, y)


def run(variant, args, device):
    torch.manual_seed(1)
    teacher, shape = spec_model.build(args.teacher)
    student, _ = spec_model.build(args.student)
    teacher, student = teacher.to(device).eval(), student.to(device).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=1e-4)
    classes = student(torch.zeros((2,) + shape, device=device)).shape[1]
    distinct = 4
    xs = torch.rand((distinct, args.batch) + shape, device=device)
    ys = torch.arange(distinct * args.batch, device=device).reshape(distinct, args.batch) % classes

    def forward_loss(x, y):
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(student(x), t, y, args.temperature, args.alpha)

    fn = forward_loss
    if variant == "compile":
        fn = torch.compile(forward_loss)
    elif variant == "max-autotune":
        fn = torch.compile(forward_loss, mode="max-autotune")

    def step(i):
        opt.zero_grad(set_to_none=True)
        fn(xs[i % distinct], ys[i % distinct]).backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    rates = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(i)
        sync()
        rates.append(args.steps * args.batch / (time.perf_counter() - t0))
    peak = f", peak memory {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB" if device == "cuda" else ""
    return statistics.median(rates), rates, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="eager")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, batch {args.batch}, {args.teacher} -> {args.student}")
    variants = args.variants.split(",")
    for v in variants:
        median, rates, peak = run(v, args, args.device)
        print(f"kd-step[{v}]: {median:.1f} samples/s (repeats {', '.join(f'{r:.1f}' for r in rates)}{peak})")
        if len(variants) == 1:
            print(f"kd-step: {median:.1f} samples/s")


if __name__ == "__main__":
    main()
