#!/usr/bin/env bash
# Every GPU test class in its own JVM, in parallel, each under a time limit, so a crash or a hang
# in one class does not hide the others' results. Runs on the lent GPU machine over a tree staged
# by ../shared/device/stage.sh (device tool: carry [".device"]):
#   bash bench/gpu-verify.sh [CLASS ...]        default: every Gpu*Test class
# Writes $OUT/verify.tgz (per class: console tree, JUnit XML, any hs_err crash log) and prints a
# one-line verdict per class.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
LIMIT="${LIMIT:-420}"
classes=("$@")
[ ${#classes[@]} -gt 0 ] || classes=(GpuFoundationTest GpuBackendTest GpuDistillationLossTest GpuModelTest GpuTrainerTest GpuPredictorTest GpuDecoderOpsTest GpuDecoderModelTest)
work=/tmp/gpu-verify; rm -rf "$work"; mkdir -p "$work"
for c in "${classes[@]}"; do
  mkdir -p "$work/$c"
  ( JAVA_TOOL_OPTIONS="-XX:ErrorFile=$work/$c/hs_err_%p.log" OUT="$work/$c" \
      timeout "$LIMIT" bash .device/on-device.sh test --include-tag gpu --include-classname ".*\\.$c" \
      > "$work/$c/console.txt" 2>&1
    echo "$?" > "$work/$c/rc" ) &
done
wait
for c in "${classes[@]}"; do
  rc=$(cat "$work/$c/rc" 2>/dev/null || echo '?')
  summary=$(grep -E "tests (successful|failed|aborted)" "$work/$c/console.txt" | tr -s ' ' | tr '\n' ' ')
  echo "$c rc=$rc $summary"
done
tar -C "$work" -czf "$OUT/verify.tgz" .
cp "$work/${classes[0]}/gpu.txt" "$OUT/gpu.txt" 2>/dev/null || true
