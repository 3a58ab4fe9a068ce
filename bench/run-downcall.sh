#!/usr/bin/env bash
# Downcall cost: Distill4J's generated bindings (JMH) next to the same calls from C, in one session.
#   bench/run-downcall.sh                  full run (3 forks x 5 x 1 s per benchmark, about 1 minute)
#   bench/run-downcall.sh -f 1 -i 3 -wi 2  extra arguments go to JMH
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
JAVA="$(./distill jdk)/bin/java"
./distill build -q -pl bench -am
cp="bench/target/classes:$(ls bench/target/lib/*.jar | tr '\n' ':')"
echo "== Distill4J bindings (JMH)"
"$JAVA" --enable-native-access=ALL-UNNAMED --sun-misc-unsafe-memory-access=allow -cp "$cp" org.openjdk.jmh.Main DowncallBenchmark "$@"
echo "== C baseline (gcc -O2, same functions through a dlsym'd pointer)"
cache="${DISTILL4J_CACHE_DIR:-$HOME/.cache/distill4j}/natives"
lib="$cache/$(ls "$cache" | grep '^openblas-' | sort -V | tail -1)/libopenblas.so.0"
tmp="$(mktemp -d)"
gcc -O2 -o "$tmp/downcall_baseline" bench/native/downcall_baseline.c -ldl
"$tmp/downcall_baseline" "$lib"
rm -rf "$tmp"
