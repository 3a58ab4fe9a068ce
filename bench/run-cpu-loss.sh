#!/usr/bin/env bash
# The CPU fused loss side by side with PyTorch, in one run on this machine:
#   1. JMH DistillationLossBenchmark: the float fast path, the double oracle and a memory copy of the
#      same bytes (4096x1000 and 512x32000, Hinton KL, reverse KL and JSD at T = 4, alpha = 0.9,
#      labels, gradient apart);
#   2. bench/pytorch/loss_bench.py --cpu: the same losses (KL, reverse KL, JSD) in PyTorch eager
#      and torch.compile.
# PYTHON: a Python with torch (CPU build is enough), e.g. a venv made with
#   python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install "torch==2.13.0+cpu" numpy
#   PYTHON=/tmp/torchvenv/bin/python bench/run-cpu-loss.sh [JMH args]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
BENCHMARKS=DistillationLossBenchmark bash bench/run-cpu-ops.sh -f 1 -wi 3 -w 1 -i 5 -r 1 "$@"
PY="${PYTHON:-python3}"
if "$PY" -c 'import torch' 2>/dev/null; then
  for d in kl reverse-kl jsd; do "$PY" bench/pytorch/loss_bench.py --cpu --divergence=$d; done
else
  echo "run-cpu-loss: no torch in $PY (set PYTHON): PyTorch side skipped" >&2
fi
