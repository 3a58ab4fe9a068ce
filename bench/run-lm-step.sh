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
# launcher (default ./distill). ENGINES: CPU gemm engines to compare, comma-separated (onednn,
# openblas, java; default: the launcher's default): each round runs Distill4J once per engine, then
# PyTorch (interleaved A/B); one row and one median per engine.
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
ENGINE_LIST=${ENGINES:-default}; ENGINE_LIST=${ENGINE_LIST//,/ }
echo "gpt2-small shape: $LAYERS layers, B $BATCH, T $SEQ; $THREADS threads; PyTorch attention $ATTN; $(date -u '+%F %T UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-10s %-26s %-26s %8s %s\n' round engine "distill4j tok/s (RSS MiB)" "pytorch tok/s (RSS MiB)" ratio load
declare -A ours_all ours_rss
theirs_all="" theirs_rss=""
for round in $(seq 1 "$ROUNDS"); do
    os=() orss=() 
    for e in $ENGINE_LIST; do
        flag=(); [ "$e" != default ] && flag=(--cpu-engine "$e")
        out=$($DISTILL bench lm-step --config gpt2-small --layers "$LAYERS" --seq-len "$SEQ" --batch "$BATCH" --steps "$STEPS" \
            --repeats "$REPEATS" --warmup "$WARMUP" "${flag[@]}" 2>&1)
        o=$(echo "$out" | rate); r=$(echo "$out" | rss)
        if [ -z "$o" ]; then echo "$out"; echo "run-lm-step: a run printed no rate (output above)" >&2; exit 1; fi
        os+=("$o"); orss+=("$r")
        ours_all[$e]+="$o"$'\n'; ours_rss[$e]+="$r"$'\n'
    done
    pt=$($PYTHON bench/pytorch/lm_step.py --config gpt2-small --layers "$LAYERS" --seq-len "$SEQ" --batch "$BATCH" --steps "$STEPS" \
        --repeats "$REPEATS" --warmup "$WARMUP" --threads "$THREADS" --attn "$ATTN" 2>&1)
    p=$(echo "$pt" | rate); prss=$(echo "$pt" | rss)
    if [ -z "$p" ]; then echo "$pt"; echo "run-lm-step: a run printed no rate (output above)" >&2; exit 1; fi
    i=0
    for e in $ENGINE_LIST; do
        printf '%-6s %-10s %-26s %-26s %8s %s\n' "$round" "$e" "${os[$i]} (${orss[$i]})" "$p ($prss)" "$(awk "BEGIN {printf \"%.2fx\", ${os[$i]} / $p}")" "$(cut -d' ' -f1-3 /proc/loadavg)"
        i=$((i + 1))
    done
    theirs_all+="$p"$'\n'; theirs_rss+="$prss"$'\n'
done
pm=$(printf '%s' "$theirs_all" | median); prm=$(printf '%s' "$theirs_rss" | median)
for e in $ENGINE_LIST; do
    om=$(printf '%s' "${ours_all[$e]}" | median); orm=$(printf '%s' "${ours_rss[$e]}" | median)
    printf 'median over %d rounds, engine %s: distill4j %s tokens/s, pytorch %s tokens/s, ratio %s; peak RSS distill4j %s MiB, pytorch %s MiB\n' "$ROUNDS" "$e" \
        "$om" "$pm" "$(awk "BEGIN {printf \"%.2fx\", $om / $pm}")" "$orm" "$prm"
done
