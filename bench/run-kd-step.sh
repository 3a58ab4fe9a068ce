#!/usr/bin/env bash
# Distill4J's `distill bench kd-step` and PyTorch's bench/pytorch/kd_step.py, alternately, on the
# standard pairs of issue 7, in one session; prints each pair's medians and the ratio.
#   bench/run-kd-step.sh [cpu|cuda] [rounds]
# PYTHON names a Python with torch (default: python3); DISTILL the Distill4J launcher (default
# ./distill; on the GPU machine: "bash .device/on-device.sh java org.distill4j.cli.Main").
# PAIRS overrides the list ("NAME TEACHER STUDENT BATCH STEPS" per line).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
ROUNDS=${2:-2}
PYTHON=${PYTHON:-python3}
DISTILL=${DISTILL:-./distill}
VARIANTS=${VARIANTS:-eager}
S=bench/specs
PAIRS=${PAIRS:-"mlp-256 $S/mlp-teacher.json $S/mlp-student.json 256 30
mlp-1024 $S/mlp-teacher.json $S/mlp-student.json 1024 10
wide-256 $S/wide-teacher.json $S/wide-student.json 256 5
wide-1024 $S/wide-teacher.json $S/wide-student.json 1024 3
cnn-256 $S/cnn-teacher.json $S/cnn-student.json 256 3"}
last() { grep -E "^$1" | tail -1 | sed -E 's/.*: ([0-9.]+) samples\/s.*/\1/'; }
printf '%-10s %-6s %14s %14s %8s\n' pair round distill4j pytorch ratio
while read -r name teacher student batch steps; do
    [ -z "$name" ] && continue
    for round in $(seq 1 "$ROUNDS"); do
        ours=$($DISTILL bench kd-step --teacher "$teacher" --student "$student" --batch "$batch" --steps "$steps" --warmup 3 --repeats 5 \
            --device "$DEVICE" 2>/dev/null | last "kd-step:")
        for v in ${VARIANTS//,/ }; do
            theirs=$($PYTHON bench/pytorch/kd_step.py --teacher "$teacher" --student "$student" --batch "$batch" --steps "$steps" --warmup 3 \
                --repeats 5 --device "$DEVICE" --variants "$v" | last "kd-step\[")
            printf '%-10s %-6s %14s %14s %8s\n' "$name" "$round/$v" "$ours" "$theirs" "$(awk "BEGIN {printf \"%.2fx\", $ours / $theirs}")"
        done
    done
done <<< "$PAIRS"
