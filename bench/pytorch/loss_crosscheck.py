#!/usr/bin/env python3
"""`distill loss` against a PyTorch float64 reference on random cases (the check a user runs on
their own numbers, automated): every divergence, T in {0.1, 1, 4, 100} with logits up to +-1e4 at
T = 0.1, alpha, beta (0 and 1 included: JSD is then KL / reverse KL), ignored rows, int32 and int64
labels, C from 1 to 5000, without labels too, and top-k teachers (`--teacher-indices`: the k largest
teacher logits a row and their classes, for KL and JSD with beta < 1; the reference takes the dense
teacher with -inf at the classes not kept). The issue's bound: loss within 1e-5 relative, the
gradient within 1e-4 of its largest element.

    python3 bench/pytorch/loss_crosscheck.py [CASES] [--distill "./distill"] [--device cpu|cuda]
        [--seed N] [--loss-rel 1e-5] [--grad-rel 1e-4]

On a GPU machine (through the staged launcher, fp32 kernels: the GPU tests' bound is 1e-4):
    bash .device/on-device.sh sh 'python3 bench/pytorch/loss_crosscheck.py 100 --device cuda \
        --distill "$JAVA $JAVA_OPTS -cp $CP org.distill4j.cli.Main" --loss-rel 1e-4'

Needs torch and numpy (pip install "torch==2.13.0+cpu" numpy in a venv); runs ./distill once a
case. Prints one line a case and exits 1 if any is outside the bound.
"""
import argparse
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F


def reference(s, t, y, div, T, alpha, beta, ignore=-100):
    """Loss and dL/ds in float64, by autograd, as docs/distillation-loss.md defines them."""
    s = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(t, dtype=torch.float64)
    lp, lq = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    p, q = lp.exp(), lq.exp()
    if div == "jsd" and beta == 0:
        div = "kl"
    if div == "jsd" and beta == 1:
        div = "reverse-kl"
    if div == "kl":
        d = torch.where(q > 0, q * (lq - lp), torch.zeros_like(q)).sum(-1)
    elif div == "reverse-kl":
        d = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)
    elif div == "jsd":
        lm = torch.logaddexp(np.log(1 - beta) + lp, np.log(beta) + lq)
        d = beta * torch.where(q > 0, q * (lq - lm), torch.zeros_like(q)).sum(-1) \
            + (1 - beta) * torch.where(p > 0, p * (lp - lm), torch.zeros_like(p)).sum(-1)
    else:
        d = (((s - t) / T) ** 2).mean(-1)
    if y is None:
        loss = (alpha * T * T * d).sum() / s.shape[0]
    else:
        yt = torch.tensor(y, dtype=torch.int64)
        keep = yt != ignore
        n = keep.sum()
        ce = -F.log_softmax(s, -1).gather(1, yt.clamp(min=0).unsqueeze(1)).squeeze(1)
        loss = torch.where(keep, alpha * T * T * d + (1 - alpha) * ce, torch.zeros_like(d)).sum() / n
    loss.backward()
    return loss.item(), s.grad.numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="?", type=int, default=40)
    ap.add_argument("--distill", default="./distill")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    ap.add_argument("--loss-rel", type=float, default=1e-5)
    ap.add_argument("--grad-rel", type=float, default=1e-4)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    print(f"seed {a.seed}")
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.cases):
            n = int(rng.integers(1, 40))
            c = int(rng.choice([1, 2, 7, 33, 512, 1000, 5000]))
            div = str(rng.choice(["kl", "reverse-kl", "jsd", "mse"]))
            T = float(rng.choice([0.1, 1.0, 4.0, 100.0]))
            scale = 1e4 if T == 0.1 and rng.random() < 0.5 else 5.0
            beta = float(rng.choice([0.0, 0.3, 0.5, 1.0])) if div == "jsd" else 0.5
            labelled = rng.random() < 0.8
            alpha = float(rng.choice([0.0, 0.5, 0.9, 1.0])) if labelled else 1.0
            s = (rng.standard_normal((n, c)) * scale).astype(np.float32)
            t = (rng.standard_normal((n, c)) * scale).astype(np.float32)
            topk = None
            if (div == "kl" or (div == "jsd" and beta < 1)) and rng.random() < 0.3:
                k = int(rng.integers(1, c + 1))
                topk = np.argsort(-t, axis=1, kind="stable")[:, :k]  # each row's classes by descending logit
                kept = np.take_along_axis(t, topk, axis=1)
                t = np.full_like(t, -np.inf)
                np.put_along_axis(t, topk, kept, axis=1)
            y = None
            if labelled:
                y = rng.integers(0, c, n).astype(np.int64)
                y[rng.random(n) < 0.25] = -100
                if (y == -100).all():
                    y[0] = 0
            np.save(f"{d}/s.npy", s)
            cmd = shlex.split(a.distill) + ["loss", "--student", f"{d}/s.npy", "--teacher", f"{d}/t.npy", "--divergence", div,
                                            "--temperature", repr(T), "--beta", repr(beta), "--grad-out", f"{d}/g.npy", "--device", a.device]
            if topk is None:
                np.save(f"{d}/t.npy", t)
            else:
                np.save(f"{d}/t.npy", kept)
                np.save(f"{d}/i.npy", topk.astype(np.int32) if rng.random() < 0.5 else topk.astype(np.int64))
                cmd += ["--teacher-indices", f"{d}/i.npy"]
            if y is not None:
                np.save(f"{d}/y.npy", y.astype(np.int32) if rng.random() < 0.5 else y)
                cmd += ["--labels", f"{d}/y.npy", "--alpha", repr(alpha)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            what = f"case {i}: {n}x{c} {div} T={T} scale={scale:g} alpha={alpha} beta={beta} labels={labelled}{f' top-{topk.shape[1]}' if topk is not None else ''}"
            if run.returncode != 0:
                print(f"FAIL {what}: exit {run.returncode}: {run.stderr.strip()}")
                bad += 1
                continue
            ours = float(run.stdout.strip().splitlines()[-1])
            g = np.load(f"{d}/g.npy").astype(np.float64)
            ref, rg = reference(s, t, y, div, T, alpha, beta)
            lerr = abs(ours - ref) / max(abs(ref), 1e-30)
            gerr = np.abs(g - rg).max() / max(np.abs(rg).max(), 1e-30)
            ok = (lerr <= a.loss_rel or abs(ours - ref) <= 1e-6) and gerr <= a.grad_rel
            bad += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {what}: loss {ours:.9g} vs {ref:.9g} (rel {lerr:.1e}), gradient {gerr:.1e} of its largest")
    print(f"{a.cases - bad}/{a.cases} within {a.loss_rel:g} (loss) and {a.grad_rel:g} (gradient)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
