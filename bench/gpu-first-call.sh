#!/usr/bin/env bash
# A GPU session's first device call, sized for the device tool's budget as it stands since the
# ninth session: 15 device-minutes a session (the machine's start, every call and its idle time
# together), at most 10 minutes a command. One call, the checks in order of their worth, each
# started only when the time left covers its estimate and cut off at the deadline; each result is
# written to $OUT as soon as it exists, so a call stopped at its limit still brings back the parts
# that finished. On the lent GPU machine, after `bash bench/stage-device.sh` here:
#   device tool: run, carry [".device"], timeout_s 600, command: bash bench/gpu-first-call.sh
#   BUDGET=seconds (default 500, under the 600 s a command may run), PARTS="verify loss sweep sweep-pg"
# $OUT afterwards:
#   gpu.txt          nvidia-smi, the NVIDIA libraries found, the JRE (written by .device/on-device.sh)
#   device.txt       `distill info` through the staged runtime
#   verify.tgz       bench/gpu-verify.sh: every Gpu*Test class in its own JVM, in parallel
#   verify.txt       its one-line verdict per class
#   loss.txt         GpuLossBench (ours against the same run's device-to-device copy) and
#                    bench/pytorch/loss_bench.py (PyTorch eager, torch.compile) at rows 16384
#   sweep.txt, sweep-summary.md        every launch variant of the fused loss, KL
#   sweep-pg.txt, sweep-pg-summary.md  the same for JSD (the _pg kernels)
#   timings.txt      each part's start, seconds taken, exit code, or why it was skipped: the next
#                    session sizes its calls from these
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
BUDGET="${BUDGET:-500}"
PARTS="${PARTS:-verify loss sweep sweep-pg}"
start=$SECONDS
timings="$OUT/timings.txt"
: > "$timings"

# Estimated seconds a part needs to be worth starting (none measured on an H200 yet: the H100
# sessions recorded no per-call times; timings.txt replaces these guesses with figures).
estimate() {
  case "$1" in
    verify) echo 120 ;;   # six classes at once; GpuDistillationLossTest is the longest
    loss) echo 90 ;;      # five C for ours, then PyTorch eager and torch.compile (compiles first)
    sweep | sweep-pg) echo 60 ;;  # about 80 variants a C; cut off at the deadline, partial logs kept
    *) echo 0 ;;
  esac
}

left() { echo $((BUDGET - (SECONDS - start))); }

run_part() { # name, command...: runs under the time left, records its time and exit code
  local name="$1"; shift
  local remaining; remaining=$(left)
  local need; need=$(estimate "$name")
  if [ "$remaining" -lt "$need" ]; then
    echo "$name skipped: ${remaining}s left of ${BUDGET}s, estimate ${need}s" | tee -a "$timings"
    return 0
  fi
  local t0=$SECONDS
  echo "=== $name (${remaining}s left)"
  timeout --kill-after=10 "$remaining" "$@"
  local rc=$?
  echo "$name started $((t0 - start))s, took $((SECONDS - t0))s, rc=$rc$([ $rc -eq 124 ] && echo ' (cut off at the deadline)')" | tee -a "$timings"
}

[ -f .device/on-device.sh ] || { echo "gpu-first-call: no .device/on-device.sh: run bash bench/stage-device.sh here and carry .device" >&2; exit 2; }

bash .device/on-device.sh java org.distill4j.cli.Main info > "$OUT/device.txt" 2>&1
echo "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)" | tee -a "$timings"

for part in $PARTS; do
  case "$part" in
    verify)
      # each class's own limit: what is left, less the loss figures' estimate
      run_part verify env LIMIT=$(( $(left) - $(estimate loss) > 60 ? $(left) - $(estimate loss) : 60 )) bash bench/gpu-verify.sh
      ;;
    loss | sweep | sweep-pg)
      run_part "$part" bash .device/on-device.sh sh "bash bench/gpu-session.sh $part"
      ;;
    *) echo "gpu-first-call: unknown part '$part' (verify | loss | sweep | sweep-pg)" >&2; exit 2 ;;
  esac
done 2>&1 | tee "$OUT/first-call.log"
grep -E "^Gpu[A-Za-z]+Test rc=" "$OUT/first-call.log" > "$OUT/verify.txt" 2>/dev/null || true
echo "gpu-first-call: $((SECONDS - start))s of ${BUDGET}s"
