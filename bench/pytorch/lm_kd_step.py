#!/usr/bin/env python3
"""PyTorch reference for `distill bench lm-kd-step`: the same token-level distillation step on
the CPU, fp32, with transformers' AutoModelForCausalLM loaded from the same folders:

  teacher (eval, no_grad) logits z_t [B, T, V];  student (train) logits z_s [B, T, V]
  loss = sum over the B*T target tokens of
           alpha T^2 KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) CE(z_s, target)
         / (B*T)
  loss.backward(); AdamW step (betas 0.9/0.999, eps 1e-8, weight decay on parameters of rank >= 2
  only, as LmTrainer does); zero_grad(set_to_none=True)

V is the vocabulary both share (the smaller; padding rows of the larger are left out, as in
Distill4J). Token ids are random (fixed seed): B windows of T + 1, inputs the first T and targets
the last T. A folder without weights gets transformers' from_config initialisation.

Modes (--mode): eager; compile: torch.compile (inductor) of the forward part of the step (both
models' forwards and the loss; the backward is compiled with it by AOTAutograd); the AdamW step
stays eager (torch.optim's default for-loop implementation on the CPU).

After --warmup steps (compile needs >= 2: the first call compiles), --repeats runs of --steps steps
are timed; prints the median and the peak RSS (VmHWM of this process; inductor's compile workers
are other processes and are not counted) and a last line "lm-kd-step: <tokens/s> tokens/s".

  python3 bench/pytorch/lm_kd_step.py --teacher T/ --student S/ --seq-len 128 --batch 4 --mode eager --threads 2
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def has_weights(folder):
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--mode", default="eager", choices=["eager", "compile"])
    ap.add_argument("--teacher-dtype", default="f32", choices=["f32", "bf16"],
                    help="bf16: the frozen teacher in torch.bfloat16 (its logits taken to float32 for the loss), as a bf16 checkpoint runs")
    args = ap.parse_args()
    if args.mode == "compile" and args.warmup < 2:
        sys.exit("--mode compile needs --warmup >= 2 (the first steps compile)")
    torch.set_num_threads(args.threads)
    from transformers import AutoConfig, AutoModelForCausalLM

    def load(folder, seed):
        if has_weights(folder):
            return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=args.attn, dtype=torch.float32)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), attn_implementation=args.attn, dtype=torch.float32)

    teacher = load(args.teacher, args.seed + 1).eval()
    teacher.requires_grad_(False)
    if args.teacher_dtype == "bf16":
        teacher = teacher.to(torch.bfloat16)
    student = load(args.student, args.seed).train()
    vocab = min(teacher.config.vocab_size, student.config.vocab_size)
    b, t, temp, alpha = args.batch, args.seq_len, args.temperature, args.alpha

    g = torch.Generator().manual_seed(args.seed)
    windows = torch.randint(0, vocab, (b, t + 1), generator=g)
    inputs, targets = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    decay = [p for p in student.parameters() if p.dim() >= 2]
    plain = [p for p in student.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": plain, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, 0.999), eps=1e-8)

    def forward_loss(x, y):
        with torch.no_grad():
            zt = teacher(input_ids=x).logits[..., :vocab].reshape(-1, vocab).float()
        zs = student(input_ids=x).logits[..., :vocab].reshape(-1, vocab)
        n = zs.shape[0]
        # KL(q || p) summed over classes and tokens, then divided by the tokens: the per-token mean.
        soft = F.kl_div(F.log_softmax(zs / temp, dim=-1), F.log_softmax(zt / temp, dim=-1), reduction="sum", log_target=True) / n
        hard = F.cross_entropy(zs, y.reshape(-1))
        return alpha * temp * temp * soft + (1 - alpha) * hard, soft, hard

    fwd = torch.compile(forward_loss) if args.mode == "compile" else forward_loss

    def step():
        loss, soft, hard = fwd(inputs, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item(), soft.item(), hard.item()

    t0 = time.perf_counter()
    last = (float("nan"),) * 3
    for _ in range(args.warmup):
        last = step()
    warm_s = time.perf_counter() - t0
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            last = step()
        rates.append(args.steps * b * t / (time.perf_counter() - t0))
    med = statistics.median(rates)
    tp, sp = sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters())
    print(f"teacher {args.teacher}: {teacher.config.model_type}, {teacher.config.num_hidden_layers} layers, hidden {teacher.config.hidden_size}, {tp:,} parameters; "
          f"student {args.student}: {student.config.num_hidden_layers} layers, hidden {student.config.hidden_size}, {sp:,} parameters")
    print(f"B {b}, T {t}, vocabulary {vocab}; kl T {temp} alpha {alpha}; adamw lr {args.lr} weight decay {args.weight_decay}; "
          f"loss {alpha * temp * temp * last[1] + (1 - alpha) * last[2]:.4f} (soft {alpha * temp * temp * last[1]:.4f}, hard {(1 - alpha) * last[2]:.4f})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention {args.attn}, mode {args.mode}; warm-up {args.warmup} steps {warm_s:.1f} s")
    print(f"lm-kd-step[{args.mode}]: {med:.1f} tokens/s  (repeats {', '.join(f'{r:.1f}' for r in rates)}, peak RSS {peak_rss_mib():.1f} MiB)")
    print(f"median step {b * t / med * 1e3:.1f} ms; peak RSS {peak_rss_mib():.1f} MiB")
    print(f"lm-kd-step: {med:.1f} tokens/s")


if __name__ == "__main__":
    main()
