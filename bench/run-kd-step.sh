#!/usr/bin/env bash
# Distill4J's `distill bench kd-step` and PyTorch's bench/pytorch/kd_step.py, alternately, on the
# standard pairs of issue 7, in one session; prints each pair's medians with the spread of the
# repeats (min-max) and the ratio of the medians.
#   bench/run-kd-step.sh [cpu|cuda] [rounds]
# PYTHON names a Python with torch (default: python3); DISTILL the Distill4J launcher (default
# ./distill; on the GPU machine: "bash .device/on-device.sh java org.distill4j.cli.Main").
# VARIANTS: PyTorch variants, comma-separated (eager, compile, max-autotune; default eager).
# GRAPH: --graph for Distill4J (auto, on, off; default auto). PAIRS overrides the list
# ("NAME TEACHER STUDENT BATCH STEPS" per line). WARMUP: untimed steps first, for both (default 8: the JIT needs them).
# ENGINES: CPU gemm engines to compare, comma-separated (onednn, openblas, java; default: the
# launcher's default, the fastest present): each round runs Distill4J once per engine, then PyTorch,
# so the engines are interleaved A/B on the same machine state; one row per engine.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
ROUNDS=${2:-2}
PYTHON=${PYTHON:-python3}
DISTILL=${DISTILL:-./distill}
VARIANTS=${VARIANTS:-eager}
GRAPH=${GRAPH:-auto}
WARMUP=${WARMUP:-8}
ENGINES=${ENGINES:-}
ENGINE_LIST=${ENGINES//,/ }
ENGINE_LIST=${ENGINE_LIST:-default}
S=bench/specs
PAIRS=${PAIRS:-"mlp-256 $S/mlp-teacher.json $S/mlp-student.json 256 30
mlp-1024 $S/mlp-teacher.json $S/mlp-student.json 1024 10
wide-256 $S/wide-teacher.json $S/wide-student.json 256 5
wide-1024 $S/wide-teacher.json $S/wide-student.json 1024 3
cnn-256 $S/cnn-teacher.json $S/cnn-student.json 256 3"}
median() { grep -E "^$1" | tail -1 | sed -E 's/.*: ([0-9.]+) samples\/s.*/\1/'; }
printf '%-10s %-22s %-28s %-28s %8s\n' pair round/engine/torch "distill4j [min-max]" "pytorch [min-max]" ratio
echo "# $(date -u '+%F %T UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), load $(cut -d' ' -f1-3 /proc/loadavg)"
while read -r name teacher student batch steps; do
    [ -z "$name" ] && continue
    for round in $(seq 1 "$ROUNDS"); do
        ours=() ourSpread=() labels=()
        for e in $ENGINE_LIST; do
            flag=(); [ "$e" != default ] && flag=(--cpu-engine "$e")
            out=$($DISTILL bench kd-step --teacher "$teacher" --student "$student" --batch "$batch" --steps "$steps" --warmup "$WARMUP" --repeats 5 \
                --device "$DEVICE" --graph "$GRAPH" "${flag[@]}" 2>/dev/null)
            ours+=("$(echo "$out" | median "kd-step:")")
            ourSpread+=("$(echo "$out" | grep -E "spread" | sed -E 's/.*spread ([0-9.]+)-([0-9.]+).*/\1-\2/')")
            labels+=("$e")
        done
        for v in ${VARIANTS//,/ }; do
            pt=$($PYTHON bench/pytorch/kd_step.py --teacher "$teacher" --student "$student" --batch "$batch" --steps "$steps" --warmup "$WARMUP" \
                --repeats 5 --device "$DEVICE" --variants "$v")
            theirs=$(echo "$pt" | median "kd-step\[")
            theirSpread=$(echo "$pt" | grep -E "^kd-step\[" | sed -E 's/, peak[^)]*//; s/.*repeats ([^)]*).*/\1/' | tr -d ',' | tr ' ' '\n' | grep -E '^[0-9.]+$' | sort -g | sed -n '1p;$p' | paste -sd-)
            for i in "${!ours[@]}"; do
                printf '%-10s %-22s %-28s %-28s %8s\n' "$name" "$round/${labels[$i]}/$v" "${ours[$i]} [${ourSpread[$i]}]" "$theirs [$theirSpread]" \
                    "$(awk "BEGIN {printf \"%.2fx\", ${ours[$i]} / $theirs}")"
            done
        done
    done
done <<< "$PAIRS"
