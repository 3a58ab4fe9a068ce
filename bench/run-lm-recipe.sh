#!/usr/bin/env bash
# examples/lm's teacher recipe in Distill4J and in PyTorch (bench/pytorch/lm_recipe.py), alternately on this machine:
# the same config.json (examples/lm/teacher), the same token windows (data/lm, made by examples/lm/prepare.sh), the
# same AdamW / cosine / warm-up / clipping settings; each run's validation loss on the held-out 10% and wall time.
# Passes when our median validation loss is within 2% of PyTorch's (the inits and the window orders differ, so
# the two runs are not the same numbers; 2% is the contract's bound on the gap).
#   bench/run-lm-recipe.sh [rounds]          (default 1; a round is one teacher each)
# PYTHON: a Python with torch, transformers and numpy (default python3). DISTILL: the launcher (default ./distill).
# STEPS: the teacher's steps (default 128, as examples/lm/run.sh; a smaller number checks the script quickly).
# Runs go to runs/lm-recipe/ (ours-rN, pytorch-rN).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
PYTHON=${PYTHON:-python3}
DISTILL=${DISTILL:-./distill}
[ -f data/lm/train.npy ] && [ -f data/lm/val.npy ] || examples/lm/prepare.sh
OUT=runs/lm-recipe
mkdir -p "$OUT"
SEQ=128
STEPS=${STEPS:-128}  # the teacher's steps (examples/lm/run.sh's TEACHER_STEPS)
# Keep in step with examples/lm/run.sh's COMMON and TEACHER_ARGS.
OURS=(--data tokens:data/lm/train.npy --seq-len $SEQ --optimizer adamw --weight-decay 0.1 --schedule cosine --clip-norm 1
      --batch 8 --max-steps "$STEPS" --lr 2e-3 --warmup 16 --seed 1)
THEIRS=(--train data/lm/train.npy --val data/lm/val.npy --seq-len $SEQ --weight-decay 0.1 --clip-norm 1
        --batch 8 --max-steps "$STEPS" --lr 2e-3 --warmup 16 --seed 1 --threads 2)
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ours_loss=(); theirs_loss=()
for r in $(seq 1 "$ROUNDS"); do
  t0=$SECONDS
  $DISTILL train --model examples/lm/teacher "${OURS[@]}" --out "$OUT/ours-r$r" >&2
  o=$($DISTILL eval --model "$OUT/ours-r$r" --data tokens:data/lm/val.npy --seq-len $SEQ | tail -1 | sed -nE 's/^eval: loss ([0-9.eE+-]+),.*/\1/p')
  ours_s=$((SECONDS - t0))
  t0=$SECONDS
  p=$($PYTHON bench/pytorch/lm_recipe.py train --model examples/lm/teacher "${THEIRS[@]}" --out "$OUT/pytorch-r$r" |
      tail -1 | sed -nE 's/.*"val_loss": ([0-9.eE+-]+),.*/\1/p')
  theirs_s=$((SECONDS - t0))
  echo "round $r: Distill4J val loss $o ($ours_s s with eval), PyTorch val loss $p ($theirs_s s with eval); load $(cut -d' ' -f1-3 /proc/loadavg)"
  ours_loss+=("$o"); theirs_loss+=("$p")
done
mo=$(printf '%s\n' "${ours_loss[@]}" | median); mp=$(printf '%s\n' "${theirs_loss[@]}" | median)
awk -v o="$mo" -v p="$mp" 'BEGIN { d = (o - p) / p; printf "median validation loss: Distill4J %.4f (perplexity %.1f), PyTorch %.4f (perplexity %.1f), difference %+.2f%%: %s\n",
  o, exp(o), p, exp(p), 100 * d, (d <= 0.02 && d >= -0.02) ? "within 2%" : "NOT within 2%"; exit !(d <= 0.02 && d >= -0.02) }'
