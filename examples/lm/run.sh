#!/usr/bin/env bash
# A real-text result for decoders (issue 22): on Moby-Dick in GPT-2's tokenizer (examples/lm/prepare.sh), a
# teacher decoder (examples/lm/teacher: GPT-2 layout, 4 layers, width 256) trained on the first 90% of the book,
# then the same small student (examples/lm/student: 2 layers, width 64) trained on the same tokens without and
# with knowledge distillation from that teacher, for seeds 1, 2 and 3; all are scored on the held-out last 10%.
#   examples/lm/run.sh
# Prints each run's validation loss and perplexity and the table (mean +- sample std over the seeds); the runs go to
# runs/lm/ (teacher, student-no-kd-sN, student-kd-sN: HF folders with GPT-2's tokenizer, metrics.jsonl) and the table
# to runs/lm/results.md. The same recipe in PyTorch: bench/pytorch/lm_recipe.py (bench/run-lm-recipe.sh compares).
# DISTILL overrides the launcher (default ./distill). STUDENT_SEEDS (default "1 2 3") and TEACHER=DIR (reuse a
# trained teacher instead of training one) shorten a rerun; TEACHER_STEPS and STUDENT_STEPS change the budgets.
set -euo pipefail
cd "$(dirname "$0")/../.."
DISTILL=${DISTILL:-./distill}
SEEDS=${STUDENT_SEEDS:-1 2 3}
[ -f data/lm/train.npy ] && [ -f data/lm/val.npy ] || examples/lm/prepare.sh
OUT=runs/lm
mkdir -p "$OUT"

# The recipe (why these numbers: bench/RESULTS.md, "A real-text result"). Windows of T = 128 targets; AdamW with
# weight decay 0.1 on matrices and embeddings, cosine schedule with linear warm-up, gradient norm clipped to 1.
# The teacher: TEACHER_STEPS steps of 8 windows (128 steps: 131,072 tokens, 46% of the training text). Each student:
# a short budget, STUDENT_STEPS steps of 4 windows (60 steps: 30,720 tokens), where the teacher's whole next-token
# distribution per token helps most. Distillation at temperature 1 with alpha 0.9: 0.9 KL(teacher || student) +
# 0.1 CE per token. (The GPT-2 vocabulary's lm_head and softmax dominate every step at these widths.)
SEQ=128
COMMON=(--data tokens:data/lm/train.npy --seq-len $SEQ --optimizer adamw --weight-decay 0.1 --schedule cosine --clip-norm 1
        --tokenizer data/lm/gpt2)
TEACHER_STEPS=${TEACHER_STEPS:-128}
STUDENT_STEPS=${STUDENT_STEPS:-60}
TEACHER_ARGS=(--batch 8 --max-steps "$TEACHER_STEPS" --lr 2e-3 --warmup 16 --seed 1)
STUDENT_ARGS=(--batch 4 --max-steps "$STUDENT_STEPS" --lr 3e-3 --warmup 10)
KD_ARGS=(--temperature 1 --alpha 0.9)

start=$SECONDS
timed() { # label, command...: runs the command, prints its wall time
  local label=$1 t0=$SECONDS; shift
  echo "== $label: $*" >&2
  "$@"
  echo "== $label: $((SECONDS - t0)) s" >&2
}
val_of() { # model dir -> "loss perplexity" of `distill eval` on the held-out tokens
  $DISTILL eval --model "$1" --data tokens:data/lm/val.npy --seq-len $SEQ | tail -1 |
    sed -nE 's/^eval: loss ([0-9.eE+-]+), perplexity ([0-9.eE+-]+), tokens [0-9]+$/\1 \2/p'
}

TEACHER_DIR=${TEACHER:-$OUT/teacher}
if [ -z "${TEACHER:-}" ]; then
  timed teacher $DISTILL train --model examples/lm/teacher "${COMMON[@]}" "${TEACHER_ARGS[@]}" --out "$OUT/teacher"
fi
results="$OUT/results.tsv"
printf 'run\tseed\tval_loss\tval_ppl\n' > "$results"
read -r loss ppl <<< "$(val_of "$TEACHER_DIR")"
printf 'teacher\t1\t%s\t%s\n' "$loss" "$ppl" | tee -a "$results"
for seed in $SEEDS; do
  timed "student-no-kd seed $seed" $DISTILL train --model examples/lm/student "${COMMON[@]}" "${STUDENT_ARGS[@]}" --seed "$seed" \
    --out "$OUT/student-no-kd-s$seed"
  read -r loss ppl <<< "$(val_of "$OUT/student-no-kd-s$seed")"
  printf 'student-no-kd\t%s\t%s\t%s\n' "$seed" "$loss" "$ppl" | tee -a "$results"
  timed "student-kd seed $seed" $DISTILL distill --teacher "$TEACHER_DIR" --student examples/lm/student "${COMMON[@]}" \
    "${STUDENT_ARGS[@]}" "${KD_ARGS[@]}" --seed "$seed" --out "$OUT/student-kd-s$seed"
  read -r loss ppl <<< "$(val_of "$OUT/student-kd-s$seed")"
  printf 'student-kd\t%s\t%s\t%s\n' "$seed" "$loss" "$ppl" | tee -a "$results"
done

# The table: mean and sample standard deviation (n - 1) of the validation perplexity over the seeds.
{
  echo "| model | validation perplexity (mean +- std) | per seed | validation loss (mean) |"
  echo "|---|---|---|---|"
  awk -F'\t' 'NR > 1 { n[$1]++; s[$1] += $4; ss[$1] += $4 * $4; l[$1] += $3; per[$1] = per[$1] (per[$1] == "" ? "" : ", ") sprintf("%.1f", $4)
                       if (!($1 in order)) { order[$1] = ++k; name[k] = $1 } }
    END { for (i = 1; i <= k; i++) { r = name[i]; m = s[r] / n[r]
            sd = n[r] > 1 ? sqrt((ss[r] - n[r] * m * m) / (n[r] - 1)) : 0; if (sd != sd) sd = 0
            printf "| %s | %.1f +- %.1f | %s | %.4f |\n", r, m, sd, per[r], l[r] / n[r] } }' "$results"
  echo
  echo "Total wall time: $((SECONDS - start)) s (T = $SEQ, student steps $STUDENT_STEPS, seeds $SEEDS)."
} | tee "$OUT/results.md"
