#!/usr/bin/env bash
# Distill4J's `distill bench lm-step` and PyTorch's bench/pytorch/lm_step.py (eager, transformers'
# GPT2LMHeadModel), alternately, on the same GPT-2-small-shaped config and the same thread count;
# each run is its own process. Prints each round's tokens/s and peak RSS (VmHWM of the process),
# then the medians over the rounds and their ratio.
#   bench/run-lm-step.sh [rounds]
# LAYERS (default 12), SEQ (T, default 256), BATCH (default 1), STEPS per repeat (default 1),
# REPEATS per run (default 3; each run reports its median), WARMUP (default 2), THREADS (default:
# the number of cores; Java gets it as the common pool's parallelism - 1 plus the caller and as
# OPENBLAS_NUM_THREADS, PyTorch as torch.set_num_threads), ATTN (sdpa or eager; default sdpa).
# PYTHON names a Python with torch and transformers (default: python3); DISTILL the Distill4J
# launcher (default ./distill).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PYTHON=${PYTHON:-python3}
DISTILL=${DISTILL:-./distill}
LAYERS=${LAYERS:-12}
SEQ=${SEQ:-256}
BATCH=${BATCH:-1}
STEPS=${STEPS:-1}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-$(nproc)}
ATTN=${ATTN:-sdpa}
export OPENBLAS_NUM_THREADS=$THREADS
export DISTILL_JAVA_OPTS="${DISTILL_JAVA_OPTS:-} -Djava.util.concurrent.ForkJoinPool.common.parallelism=$((THREADS > 1 ? THREADS - 1 : 1))"
rate() { grep -E '^lm-step:' | tail -1 | sed -E 's/.*: ([0-9.]+) tokens\/s.*/\1/'; }
rss() { grep -E 'peak RSS' | tail -1 | sed -E 's/.*peak RSS ([0-9.]+) MiB.*/\1/'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
echo "gpt2-small shape: $LAYERS layers, B $BATCH, T $SEQ; $THREADS threads; PyTorch attention $ATTN; $(date -u '+%F %T UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-26s %-26s %8s %s\n' round "distill4j tok/s (RSS MiB)" "pytorch tok/s (RSS MiB)" ratio load
ours_all="" theirs_all="" ours_rss="" theirs_rss=""
for round in $(seq 1 "$ROUNDS"); do
    out=$($DISTILL bench lm-step --config gpt2-small --layers "$LAYERS" --seq-len "$SEQ" --batch "$BATCH" --steps "$STEPS" \
        --repeats "$REPEATS" --warmup "$WARMUP" 2>&1)
    o=$(echo "$out" | rate); orss=$(echo "$out" | rss)
    pt=$($PYTHON bench/pytorch/lm_step.py --config gpt2-small --layers "$LAYERS" --seq-len "$SEQ" --batch "$BATCH" --steps "$STEPS" \
        --repeats "$REPEATS" --warmup "$WARMUP" --threads "$THREADS" --attn "$ATTN" 2>&1)
    p=$(echo "$pt" | rate); prss=$(echo "$pt" | rss)
    if [ -z "$o" ] || [ -z "$p" ]; then echo "$out"; echo "$pt"; echo "run-lm-step: a run printed no rate (output above)" >&2; exit 1; fi
    printf '%-6s %-26s %-26s %8s %s\n' "$round" "$o ($orss)" "$p ($prss)" "$(awk "BEGIN {printf \"%.2fx\", $o / $p}")" "$(cut -d' ' -f1-3 /proc/loadavg)"
    ours_all+="$o"$'\n'; theirs_all+="$p"$'\n'; ours_rss+="$orss"$'\n'; theirs_rss+="$prss"$'\n'
done
om=$(printf '%s' "$ours_all" | median); pm=$(printf '%s' "$theirs_all" | median)
orm=$(printf '%s' "$ours_rss" | median); prm=$(printf '%s' "$theirs_rss" | median)
printf 'median over %d rounds: distill4j %s tokens/s, pytorch %s tokens/s, ratio %s; peak RSS distill4j %s MiB, pytorch %s MiB\n' "$ROUNDS" "$om" "$pm" \
    "$(awk "BEGIN {printf \"%.2fx\", $om / $pm}")" "$orm" "$prm"
