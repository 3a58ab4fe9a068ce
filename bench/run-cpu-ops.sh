#!/usr/bin/env bash
# CPU gemm (against direct OpenBLAS) and elementwise/softmax ops (against a memory copy), JMH;
# BENCHMARKS=Bf16GemmBenchmark: the frozen teacher's float32 against bf16 matrix products.
#   bench/run-cpu-ops.sh [JMH args]     e.g. -f 1 -wi 2 -i 3 for a quick look
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
JAVA="$(./distill jdk)/bin/java"
./distill build -q -pl bench -am
cp="bench/target/classes:$(ls bench/target/lib/*.jar | tr '\n' ':')"
"$JAVA" --enable-native-access=ALL-UNNAMED --sun-misc-unsafe-memory-access=allow -cp "$cp" org.openjdk.jmh.Main "${BENCHMARKS:-GemmBenchmark|ElementwiseBenchmark|LoaderBenchmark}" "$@"
