#!/usr/bin/env bash
# The GPU figures of bench/RESULTS.md in as few device calls as possible. Runs on the lent GPU
# machine through the staged launcher (JAVA, CP, JAVA_OPTS exported by .device/on-device.sh sh):
#   bash .device/on-device.sh sh 'bash bench/gpu-session.sh loss demo'
#   bash .device/on-device.sh sh 'bash bench/gpu-session.sh kd mnist predict'
# Parts: loss (GpuLossBench + bench/pytorch/loss_bench.py), sweep (GpuLossBench --sweep: every
# launch variant of the fused loss, SWEEP_REGIMES=pipe,cluster to narrow it), sweep-pg (the same for
# JSD: the _pg kernels, split's second group meeting a row included; SWEEP_REGIMES as for sweep), kd (bench/run-kd-step.sh cuda with the
# step graph on and off against PyTorch eager / compile; KD_VARIANTS=eager,compile,max-autotune adds
# max-autotune, minutes per shape), predict (the CUDA
# Predictor, direct and with dynamic batching; needs runs/mnist/student-kd carried), demo
# (distill demo --device cuda), mnist (examples/mnist/run.sh --device cuda with --graph auto and off;
# needs data/mnist carried). The GPU tests themselves: bash .device/on-device.sh test --include-tag gpu.
# Each part's output goes to $OUT/<part>.txt as well as the log.
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
: "${JAVA:?run through .device/on-device.sh sh}"
# shellcheck disable=SC2086
distill() { "$JAVA" $JAVA_OPTS -cp "$CP" org.distill4j.cli.Main "$@"; }
export -f distill 2>/dev/null || true
DISTILL_CMD="$JAVA $JAVA_OPTS -cp $CP org.distill4j.cli.Main"
for part in "$@"; do
  echo "=== $part ($(date -u +%FT%TZ))"
  case "$part" in
    loss)
      { "$JAVA" $JAVA_OPTS -cp "$CP" org.distill4j.bench.GpuLossBench; python3 bench/pytorch/loss_bench.py; } 2>&1 | tee "$OUT/loss.txt" ;;
    sweep)
      # every launch variant of the fused loss (SWEEP_REGIMES: a subset of split,pipe,warp,block,cluster,reread)
      "$JAVA" $JAVA_OPTS -cp "$CP" org.distill4j.bench.GpuLossBench "--sweep=${SWEEP_REGIMES:-split,pipe,warp,block,cluster,reread}" 2>&1 | tee "$OUT/sweep.txt"
      python3 bench/sweep_summary.py "$OUT/sweep.txt" | tee "$OUT/sweep-summary.md" ;;
    sweep-pg)
      "$JAVA" $JAVA_OPTS -cp "$CP" org.distill4j.bench.GpuLossBench --divergence=jsd "--sweep=${SWEEP_REGIMES:-split,pipe,warp,block,cluster,reread}" 2>&1 | tee "$OUT/sweep-pg.txt"
      python3 bench/sweep_summary.py "$OUT/sweep-pg.txt" | tee "$OUT/sweep-pg-summary.md" ;;
    kd)
      { for graph in on off; do
          echo "--- Distill4J step graph $graph"
          DISTILL="$DISTILL_CMD" GRAPH=$graph VARIANTS=$([ $graph = on ] && echo "${KD_VARIANTS:-eager,compile}" || echo eager) \
            PYTHON=python3 bash bench/run-kd-step.sh cuda 1
        done; } 2>&1 | tee "$OUT/kd.txt" ;;
    predict)
      { for dyn in "" "--dynamic-batching"; do
          for threads in 1 8; do
            distill bench predict --model examples/mnist/student.json --weights runs/mnist/student-kd/model.safetensors --device cuda \
              --threads $threads --batch 1 --seconds 10 $dyn | tail -2
          done
        done
        distill bench predict --model examples/mnist/student.json --weights runs/mnist/student-kd/model.safetensors --device cuda \
          --threads 8 --batch 32 --seconds 10 | tail -2; } 2>&1 | tee "$OUT/predict.txt" ;;
    demo)
      distill demo --device cuda 2>&1 | tee "$OUT/demo.txt" ;;
    mnist)
      # data/mnist (7.5 MiB) does not fit beside .device in the 64 MiB the device tool carries;
      # carry data/mnist-idx.tgz (tar -C data -czf data/mnist-idx.tgz mnist, 1.6 MiB) instead.
      [ -f data/mnist/train-images-idx3-ubyte ] || [ ! -f data/mnist-idx.tgz ] || tar -C data -xzf data/mnist-idx.tgz
      { for graph in auto off; do echo "--- step graph $graph"; DISTILL="$DISTILL_CMD" bash examples/mnist/run.sh --device cuda --graph $graph 2>&1 | grep -E "^done|step graph"; done; } \
        2>&1 | tee "$OUT/mnist.txt" ;;
    *) echo "gpu-session.sh: unknown part '$part' (loss | sweep | sweep-pg | kd | predict | demo | mnist)"; exit 2 ;;
  esac
done
