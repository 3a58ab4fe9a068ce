#!/usr/bin/env bash
# Distill4J's `distill bench lm-kd-step` and PyTorch's bench/pytorch/lm_kd_step.py (eager and
# torch.compile), alternately, on one GPT-2-shaped teacher/student pair loaded from the same
# folders, with the same thread count; each run is its own process. Per round: ours (automatic
# loss chunks), PyTorch eager, PyTorch compile, ours with --loss-chunk 0 (the whole batch's logits
# at once). Prints each round's tokens/s and peak RSS (VmHWM), then the medians over the rounds
# and the ratios to eager and to compile.
#   bench/run-lm-kd-step.sh [rounds]
# The pair (made once with transformers' from_config and save_pretrained, seed 1 and 2, then
# reused): teacher T_LAYERS (6) layers, T_HIDDEN (384) wide, T_HEADS (6) heads; student S_LAYERS
# (3), S_HIDDEN (192), S_HEADS (3); vocabulary 50257, 1024 positions, dropout 0, tied lm_head,
# in MODELS (default /tmp/distill4j-lm-kd-step; delete it to remake).
# SEQ (T, default 128), BATCH (default 4), STEPS per repeat (default 2), REPEATS per run
# (default 3; each run reports its median), WARMUP (default 2; compile gets max(WARMUP, 3)),
# THREADS (default: nproc; Java gets it as the common pool's parallelism - 1 plus the caller and
# as OPENBLAS_NUM_THREADS, PyTorch as torch.set_num_threads), MODES (PyTorch modes, default
# "eager compile"), NOCHUNK (1: also ours with --loss-chunk 0; default 1), TEACHER_DTYPE (f32, or
# bf16: the frozen teacher's matrix products in bf16 on both sides; default f32).
# PYTHON names a Python with torch and transformers (default: python3); DISTILL the Distill4J
# launcher (default ./distill).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PYTHON=${PYTHON:-python3}
DISTILL=${DISTILL:-./distill}
MODELS=${MODELS:-/tmp/distill4j-lm-kd-step}
T_LAYERS=${T_LAYERS:-6} T_HIDDEN=${T_HIDDEN:-384} T_HEADS=${T_HEADS:-6}
S_LAYERS=${S_LAYERS:-3} S_HIDDEN=${S_HIDDEN:-192} S_HEADS=${S_HEADS:-3}
SEQ=${SEQ:-128}
BATCH=${BATCH:-4}
STEPS=${STEPS:-2}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-$(nproc)}
MODES=${MODES:-eager compile}
NOCHUNK=${NOCHUNK:-1}
TEACHER_DTYPE=${TEACHER_DTYPE:-f32}
export OPENBLAS_NUM_THREADS=$THREADS
export DISTILL_JAVA_OPTS="${DISTILL_JAVA_OPTS:-} -Djava.util.concurrent.ForkJoinPool.common.parallelism=$((THREADS > 1 ? THREADS - 1 : 1))"

TEACHER=$MODELS/teacher-${T_LAYERS}x${T_HIDDEN}
STUDENT=$MODELS/student-${S_LAYERS}x${S_HIDDEN}
make_model() { # folder layers hidden heads seed
    [ -f "$1/model.safetensors" ] && return 0
    "$PYTHON" - "$@" <<'EOF'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
folder, layers, hidden, heads, seed = sys.argv[1], *map(int, sys.argv[2:])
cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=hidden, n_layer=layers, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                 tie_word_embeddings=True)
torch.manual_seed(seed)
GPT2LMHeadModel(cfg).save_pretrained(folder)
EOF
}
make_model "$TEACHER" "$T_LAYERS" "$T_HIDDEN" "$T_HEADS" 1
make_model "$STUDENT" "$S_LAYERS" "$S_HIDDEN" "$S_HEADS" 2

rate() { grep -E '^lm-kd-step:' | tail -1 | sed -E 's/.*: ([0-9.]+) tokens\/s.*/\1/'; }
rss() { grep -E 'peak RSS' | tail -1 | sed -E 's/.*peak RSS ([0-9.]+) MiB.*/\1/'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
ratio() { awk "BEGIN {printf \"%.2fx\", $1 / $2}"; }
common=(--teacher "$TEACHER" --student "$STUDENT" --seq-len "$SEQ" --batch "$BATCH" --steps "$STEPS" --repeats "$REPEATS" --temperature 1 --alpha 0.9 --teacher-dtype "$TEACHER_DTYPE")
ours() { # extra options
    local out
    out=$($DISTILL bench lm-kd-step "${common[@]}" --warmup "$WARMUP" "$@" 2>&1) || { echo "$out" >&2; exit 1; }
    [ -n "$(echo "$out" | rate)" ] || { echo "$out" >&2; echo "run-lm-kd-step: distill printed no rate" >&2; exit 1; }
    echo "$out"
}
theirs() { # mode
    local out w=$WARMUP
    [ "$1" = compile ] && [ "$w" -lt 3 ] && w=3
    out=$("$PYTHON" bench/pytorch/lm_kd_step.py "${common[@]}" --warmup "$w" --threads "$THREADS" --mode "$1" 2>&1) || { echo "$out" >&2; exit 1; }
    [ -n "$(echo "$out" | rate)" ] || { echo "$out" >&2; echo "run-lm-kd-step: lm_kd_step.py printed no rate" >&2; exit 1; }
    echo "$out"
}

echo "teacher $T_LAYERS layers x $T_HIDDEN ($T_HEADS heads), student $S_LAYERS layers x $S_HIDDEN ($S_HEADS heads), vocabulary 50257; B $BATCH, T $SEQ;" \
    "kl T 1 alpha 0.9, AdamW; teacher in $TEACHER_DTYPE; $THREADS threads; $ROUNDS rounds x $REPEATS repeats x $STEPS steps; $(date -u '+%F %T UTC'); $(uptime | sed 's/.*load/load/')"
cols=("distill4j" $MODES)
[ "$NOCHUNK" = 1 ] && cols+=("distill4j-nochunk")
printf '%-6s' round; for c in "${cols[@]}"; do printf ' %-24s' "$c tok/s (MiB)"; done; printf ' %s\n' load
declare -A all_rate all_rss
for round in $(seq 1 "$ROUNDS"); do
    printf '%-6s' "$round"
    for c in "${cols[@]}"; do
        case "$c" in
            distill4j) out=$(ours) ;;
            distill4j-nochunk) out=$(ours --loss-chunk 0) ;;
            *) out=$(theirs "$c") ;;
        esac
        r=$(echo "$out" | rate); m=$(echo "$out" | rss)
        all_rate[$c]+="$r"$'\n'; all_rss[$c]+="$m"$'\n'
        printf ' %-24s' "$r ($m)"
    done
    printf ' %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
done
echo "median over $ROUNDS rounds (tokens/s, peak RSS MiB, distill4j / it):"
ours_med=$(printf '%s' "${all_rate[distill4j]}" | median)
for c in "${cols[@]}"; do
    r=$(printf '%s' "${all_rate[$c]}" | median); m=$(printf '%s' "${all_rss[$c]}" | median)
    printf '  %-18s %10s tokens/s %10s MiB  %s\n' "$c" "$r" "$m" "$(ratio "$ours_med" "$r")"
done
