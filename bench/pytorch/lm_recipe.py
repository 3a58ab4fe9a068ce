#!/usr/bin/env python3
"""PyTorch reference for examples/lm: the same decoder recipe as `distill train` / `distill distill` on token
files (the contract of issue 22), so that our numbers can be put beside PyTorch's on the same machine.

  train    a decoder from its config.json (transformers' from_config, seeded) on --data, next-token CE
  distill  a student from its config.json with a trained --teacher folder: per target token
           alpha T^2 KL(q_teacher(T) || p_student(T)) + (1 - alpha) CE(student, target), mean over the step's tokens
  eval     mean next-token CE and perplexity of a trained folder on a token file
  recipe   the whole example: teacher, then the student without and with distillation for each --seeds,
           each evaluated on --val; prints a table (mean +- std of validation perplexity over the seeds)

Data, as TokenWindows and the contract define it: a 1-D .npy of token ids; window i is tokens[iT .. iT+T]
(T + 1 tokens, a window every T tokens, a last partial window dropped); inputs are its first T tokens,
targets its last T. Training takes --batch windows per step, the windows shuffled each epoch by a
generator seeded with --seed and the epoch (the order differs from ours), a last short batch kept. Steps: --epochs
(default 1) whole epochs, or fewer with --max-steps; the schedule spans the steps that run.
Optimizer: torch.optim.AdamW (betas 0.9/0.999, eps 1e-8) with weight decay on parameters of rank >= 2
only (the tied wte/lm_head counted once); lr: linear warm-up over --warmup steps ((step + 1) / warmup),
then cosine to 0 over all steps (TrainingConfig.lrAt); optional clipping of the global gradient norm.
The teacher runs in eval mode (no dropout). Evaluation: eval mode, every window of the file, all T
targets scored (log-sum-exp in float32, summed in float64): the windows `distill eval --seq-len T` scores.

  python3 bench/pytorch/lm_recipe.py recipe --train data/lm/train.npy --val data/lm/val.npy \\
      --teacher-config examples/lm/teacher --student-config examples/lm/student --out runs/lm-pytorch \\
      --seq-len 128 --teacher-batch 8 --teacher-steps 128 --teacher-lr 2e-3 --teacher-warmup 16 \\
      --batch 4 --max-steps 60 --lr 3e-3 --warmup 10 --temperature 1 --alpha 0.9
Every run prints one JSON line {"run": ..., "val_loss": ..., "val_ppl": ..., "train_s": ...}.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def load_tokens(path):
    a = np.load(path, mmap_mode="r")
    if a.ndim != 1:
        sys.exit(f"{path}: expected a 1-D array of token ids, got shape {a.shape}")
    return torch.from_numpy(np.asarray(a, dtype=np.int64))


def windows(tokens, t):
    """[n, T + 1]: window i = tokens[iT .. iT + T]; n = (N - 1) // T."""
    n = (tokens.numel() - 1) // t
    if n < 1:
        sys.exit(f"too few tokens ({tokens.numel()}) for one window of {t + 1}")
    idx = torch.arange(n)[:, None] * t + torch.arange(t + 1)[None, :]
    return tokens[idx]


def lr_at(step, total, lr, warmup):
    """TrainingConfig.lrAt for the cosine schedule; step is 0-based."""
    scale = 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))
    if warmup > 0 and step < warmup:
        scale *= (step + 1) / warmup
    return lr * scale


def new_model(config_dir, seed, dropout=None):
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(config_dir)
    if dropout is not None:
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = dropout
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def load_model(folder):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)


def adamw(model, lr, weight_decay):
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters yields a tied weight once
        (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8)


@torch.no_grad()
def evaluate(model, tokens, t, batch=16):
    model.eval()
    w = windows(tokens, t)
    total, count = 0.0, 0
    for i in range(0, w.shape[0], batch):
        x, y = w[i:i + batch, :-1], w[i:i + batch, 1:]
        logits = model(input_ids=x).logits.float()
        lse = torch.logsumexp(logits, dim=-1).double()  # float32 log-sum-exp: ~1e-7 relative, beside our double one
        tgt = logits.gather(-1, y[..., None]).squeeze(-1).double()
        total += float((lse - tgt).sum())
        count += y.numel()
    return total / count


def fit(model, tokens, args, teacher=None, label="run"):
    """Trains in place; returns (wall seconds, steps, last logged train loss); args.cpu_s gets the CPU seconds."""
    w = windows(tokens, args.seq_len)
    n = w.shape[0]
    steps_per_epoch = -(-n // args.batch)  # a last short batch is kept, as LmTrainer does
    total = steps_per_epoch * args.epochs  # with --max-steps the schedule spans the steps that run, as LmTrainer's
    if args.max_steps:
        total = min(total, args.max_steps)
    opt = adamw(model, args.lr, args.weight_decay)
    model.train()
    if teacher is not None:
        teacher.eval()
    step, t0, c0, last = 0, time.perf_counter(), time.process_time(), float("nan")
    epoch = 0
    while step < total:
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            batch = w[order[b * args.batch:(b + 1) * args.batch]]
            x, y = batch[:, :-1], batch[:, 1:]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, args.lr, args.warmup)
            logits = model(input_ids=x).logits  # [B, T, V]
            v = logits.shape[-1]
            ce = F.cross_entropy(logits.reshape(-1, v), y.reshape(-1))
            if teacher is None:
                loss = ce
            else:
                with torch.no_grad():
                    tlogits = teacher(input_ids=x).logits[..., :v]
                tt = args.temperature
                log_q = F.log_softmax(tlogits.reshape(-1, v) / tt, dim=-1)
                log_p = F.log_softmax(logits.reshape(-1, v) / tt, dim=-1)
                kl = F.kl_div(log_p, log_q, log_target=True, reduction="sum") / y.numel()  # KL(q || p) per token
                loss = args.alpha * tt * tt * kl + (1 - args.alpha) * ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
            opt.step()
            step += 1
            if step % args.log_every == 0 or step == total:
                last = float(loss)
                print(f"  {label} step {step}/{total} loss {last:.4f} ce {float(ce):.4f} "
                      f"{step * args.batch * args.seq_len / (time.perf_counter() - t0):.0f} tok/s", file=sys.stderr, flush=True)
        epoch += 1
    args.cpu_s = time.process_time() - c0  # on a shared machine, CPU seconds / threads estimates the idle wall time
    return time.perf_counter() - t0, total, last


def report(run, model, args, val, secs, steps):
    t0 = time.perf_counter()
    loss = evaluate(model, val, args.seq_len)
    rec = {"run": run, "val_loss": round(loss, 5), "val_ppl": round(math.exp(loss), 3), "train_s": round(secs, 1), "train_cpu_s": round(getattr(args, "cpu_s", 0.0), 1),
           "eval_s": round(time.perf_counter() - t0, 1), "steps": steps,
           "tokens": steps * args.batch * args.seq_len}
    print(json.dumps(rec), flush=True)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["train", "distill", "eval", "recipe"])
    ap.add_argument("--train", help="training tokens (.npy)")
    ap.add_argument("--val", help="validation tokens (.npy)")
    ap.add_argument("--model", help="train/distill: a folder with config.json; eval: a trained folder")
    ap.add_argument("--teacher", help="distill: a trained teacher folder")
    ap.add_argument("--teacher-config", help="recipe: the teacher's config folder")
    ap.add_argument("--student-config", help="recipe: the student's config folder")
    ap.add_argument("--out", help="where trained folders go (save_pretrained)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--teacher-lr", type=float, help="recipe: the teacher's lr (default --lr)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip-norm", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="0: --epochs whole epochs")
    ap.add_argument("--teacher-steps", type=int, help="recipe: the teacher's --max-steps")
    ap.add_argument("--teacher-batch", type=int, help="recipe: the teacher's --batch (default --batch)")
    ap.add_argument("--teacher-epochs", type=int, help="recipe: the teacher's --epochs (default --epochs)")
    ap.add_argument("--teacher-warmup", type=int, help="recipe: the teacher's --warmup (default --warmup)")
    ap.add_argument("--dropout", type=float, help="override the config's dropouts (train, recipe's teacher)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", default="1,2,3", help="recipe: the students' seeds")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.command == "eval":
        model = load_model(args.model)
        loss = evaluate(model, load_tokens(args.val), args.seq_len)
        print(f"eval: loss {loss:.6f}, perplexity {math.exp(loss):.4f}")
        return
    train, val = load_tokens(args.train), load_tokens(args.val)
    if args.command in ("train", "distill"):
        teacher = load_model(args.teacher) if args.command == "distill" else None
        model = new_model(args.model, args.seed, args.dropout if args.command == "train" else None)
        secs, steps, _ = fit(model, train, args, teacher, args.command)
        report(args.command, model, args, val, secs, steps)
        if args.out:
            model.save_pretrained(args.out)
        return

    # recipe
    base = argparse.Namespace(**vars(args))
    targs = argparse.Namespace(**vars(args))
    targs.lr = args.teacher_lr or args.lr
    targs.max_steps = args.teacher_steps if args.teacher_steps is not None else args.max_steps
    targs.batch = args.teacher_batch or args.batch
    targs.epochs = args.teacher_epochs or args.epochs
    targs.warmup = args.teacher_warmup if args.teacher_warmup is not None else args.warmup
    teacher_dir = os.path.join(args.out, "teacher")
    if os.path.exists(os.path.join(teacher_dir, "model.safetensors")):
        teacher = load_model(teacher_dir)
        rec = report("teacher (reused)", teacher, targs, val, 0.0, 0)
    else:
        teacher = new_model(args.teacher_config, args.seed, args.dropout)
        secs, steps, _ = fit(teacher, train, targs, None, "teacher")
        rec = report("teacher", teacher, targs, val, secs, steps)
        teacher.save_pretrained(teacher_dir)
    results = {"teacher": [rec]}
    for seed in [int(s) for s in args.seeds.split(",")]:
        sargs = argparse.Namespace(**vars(base))
        sargs.seed = seed
        for kind in ("no-kd", "kd"):
            student = new_model(args.student_config, seed)
            secs, steps, _ = fit(student, train, sargs, teacher if kind == "kd" else None, f"student-{kind} seed {seed}")
            results.setdefault(kind, []).append(report(f"student-{kind} seed {seed}", student, sargs, val, secs, steps))
    print(f"\nvalidation perplexity (T {args.seq_len}, alpha {args.alpha}, temperature {args.temperature}, seeds {args.seeds})")
    for kind, recs in results.items():
        ppl = [r["val_ppl"] for r in recs]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        secs = statistics.mean(r["train_s"] for r in recs)
        print(f"  {kind:8s} {statistics.mean(ppl):9.2f} +- {sd:6.2f}   ({', '.join(f'{p:.2f}' for p in ppl)}; train {secs:.0f} s each)")


if __name__ == "__main__":
    main()
