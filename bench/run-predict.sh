#!/usr/bin/env bash
# The Predictor (`distill bench predict`) against ONNX Runtime's Java API (OrtPredictBench) on the
# same student, alternately in one session: batch 1 and 32, 1 and 8 threads.
#   bench/run-predict.sh [SPEC WEIGHTS] [seconds]
# Defaults: the MNIST student of examples/mnist/run.sh (run it first). The ONNX file is exported by
# bench/pytorch/export_onnx.py with PYTHON (a Python with torch, onnx, onnxruntime; default python3).
# DISTILL: the Distill4J launcher (default ./distill, which builds first; another launcher is used as
# built). ENGINES: CPU gemm engines for Distill4J's rows, comma-separated (default: the launcher's).
# ROUNDS: how many times the whole table runs (default 1), so the two libraries alternate.
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC=${1:-examples/mnist/student.json}
WEIGHTS=${2:-runs/mnist/student-kd/model.safetensors}
SECONDS_EACH=${3:-10}
PYTHON=${PYTHON:-python3}
DISTILL=${DISTILL:-./distill}
ENGINES=${ENGINES:-default}
ROUNDS=${ROUNDS:-1}
ONNX=runs/bench/$(basename "$SPEC" .json).onnx
mkdir -p runs/bench
[ -f "$ONNX" ] && [ "$ONNX" -nt "$WEIGHTS" ] || "$PYTHON" bench/pytorch/export_onnx.py --spec "$SPEC" --weights "$WEIGHTS" --out "$ONNX"
JDK="$(./distill jdk)"
JAVA="$JDK/bin/java"
[ "$DISTILL" = ./distill ] && ./distill build -q -pl cli -am
# The ONNX Runtime side is a module of its own, built only here (-Port): its jar stays out of the default build.
JAVA_HOME="$JDK" mvn -B -q -o -Port -pl bench-ort -am package -DskipTests 2>/dev/null || JAVA_HOME="$JDK" mvn -B -q -Port -pl bench-ort -am package -DskipTests
cp="bench-ort/target/classes:$(ls bench-ort/target/lib/*.jar | tr '\n' ':')"
printf '%-8s %-8s %-22s %-40s %s\n' batch threads engine result samples/s
echo "# $(date -u '+%F %T UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
for batch in 1 32; do
  for threads in 1 8; do
    for e in ${ENGINES//,/ }; do
      flag=(); [ "$e" != default ] && flag=(--cpu-engine "$e")
      for intra in 1 0; do
        ours=$($DISTILL bench predict --model "$SPEC" --weights "$WEIGHTS" --threads "$threads" --batch "$batch" --seconds "$SECONDS_EACH" --warmup-seconds 3 \
          --intra-op-threads "$intra" "${flag[@]}")
        printf '%-8s %-8s %-22s %-40s %s\n' "$batch" "$threads" "d4j-$e-intra$intra" "$(echo "$ours" | tail -1 | sed 's/predict: //')" \
          "$(echo "$ours" | head -1 | sed -E 's/.* ([0-9,]+) samples\/s$/\1/')"
      done
    done
    for intra in 1 0; do
      ort=$("$JAVA" --enable-native-access=ALL-UNNAMED -cp "$cp" org.distill4j.bench.ort.OrtPredictBench "$ONNX" "$threads" "$batch" "$SECONDS_EACH" 3 "$intra")
      printf '%-8s %-8s %-22s %-40s %s\n' "$batch" "$threads" "ort-intra$intra" "$(echo "$ort" | tail -1 | sed 's/ort: //')" \
        "$(echo "$ort" | head -1 | sed -E 's/.* ([0-9,]+) samples\/s$/\1/')"
    done
  done
done
done
