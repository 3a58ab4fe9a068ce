#!/usr/bin/env python3
"""PyTorch reference for `distill bench lm-step`: the same decoder training step without the
optimizer, in eager mode on the CPU: zero the gradients (set_to_none, as PyTorch training loops
do), forward in train mode with dropout 0, transformers' mean next-token cross-entropy (labels =
input ids, shifted inside the model), backward into every gradient. The model is transformers'
GPT2LMHeadModel built from the same config.json with from_config (random init), fp32.

Attention: --attn sdpa (PyTorch's default in transformers, scaled_dot_product_attention) or eager.

After --warmup steps, --repeats runs of --steps steps are timed; prints
  lm-step[<attn>]: <median tokens per second> tokens/s  (repeats ..., peak RSS ...)
and a last line "lm-step: <tokens/s> tokens/s" like Distill4J's.

  python3 bench/pytorch/lm_step.py --config gpt2-small --seq-len 256 --batch 1 --steps 2 --repeats 3 --threads 2
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import torch


def gpt2_small(layers):
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
            "n_layer": layers, "n_head": 12, "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-05, "initializer_range": 0.02, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
            "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "float32"}


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a folder with config.json (weights are initialised at random)")
    ap.add_argument("--config", help="gpt2-small (768 wide, 12 heads, vocabulary 50257, 1024 positions, dropout 0)")
    ap.add_argument("--layers", type=int, default=12, help="with --config (default 12)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()
    if (args.model is None) == (args.config is None):
        sys.exit("give either --model DIR or --config gpt2-small")
    torch.set_num_threads(args.threads)
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.config is not None:
        if args.config != "gpt2-small":
            sys.exit(f"--config: unknown preset '{args.config}', expected gpt2-small")
        tmp = tempfile.mkdtemp(prefix="lm-step-")
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(gpt2_small(args.layers), f)
        folder = tmp
    else:
        folder = args.model
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=args.attn, dtype=torch.float32)
    model.train()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item()

    loss = float("nan")
    for _ in range(args.warmup):
        loss = step()
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        rates.append(args.steps * args.batch * args.seq_len / (time.perf_counter() - t0))
    med = statistics.median(rates)
    params = sum(p.numel() for p in model.parameters())
    print(f"{folder}: {config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
          f"vocabulary {config.vocab_size} ({params:,} parameters); B {args.batch}, T {args.seq_len}; loss {loss:.4f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention {args.attn}, {'; '.join(l.strip() for l in torch.__config__.parallel_info().splitlines() if 'threads' in l or 'OpenMP' in l or 'MKL' in l)}")
    print(f"lm-step[{args.attn}]: {med:.1f} tokens/s  (repeats {', '.join(f'{r:.1f}' for r in rates)}, peak RSS {peak_rss_mib():.1f} MiB)")
    print(f"median step {args.batch * args.seq_len / med * 1e3:.1f} ms; peak RSS {peak_rss_mib():.1f} MiB")
    print(f"lm-step: {med:.1f} tokens/s")


if __name__ == "__main__":
    main()
