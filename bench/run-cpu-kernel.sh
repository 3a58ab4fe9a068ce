#!/usr/bin/env bash
# The CPU loss kernel's three copies (AVX-512, AVX2, SSE2) timed in C on one thread, optionally
# against the same copies from an earlier revision, alternating in one run (bench/native/cpu_loss_kernel.c):
#   bench/run-cpu-kernel.sh [REV] [ROWS COLS [T]]      e.g. bench/run-cpu-kernel.sh HEAD~3 4096 1000 3
# Built with native/build-cpu-kernels.sh's flags. A copy this CPU cannot run crashes the program:
# on a CPU without AVX-512, time the others through JMH (-Ddistill4j.cpu.isa=avx2|sse2) instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rev=""
if [ $# -gt 0 ] && ! [[ "$1" =~ ^[0-9]+$ ]]; then rev="$1"; shift; fi  # a revision, not a row count
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
flags=(-std=gnu11 -O3 -fPIC -Wall -Wextra -Werror -Wno-psabi -fno-math-errno -fno-trapping-math -Inative/src/main/c)
build() { # tag, source
  "${CC:-gcc}" "${flags[@]}" -march=x86-64-v4 -DD4J_W=16 -DD4J_KERNEL=kd_$1_avx512 -c -o "$tmp/$1_avx512.o" "$2"
  "${CC:-gcc}" "${flags[@]}" -march=x86-64-v3 -DD4J_W=8 -DD4J_KERNEL=kd_$1_avx2 -c -o "$tmp/$1_avx2.o" "$2"
  "${CC:-gcc}" "${flags[@]}" -march=x86-64 -DD4J_W=4 -DD4J_KERNEL=kd_$1_sse2 -c -o "$tmp/$1_sse2.o" "$2"
}
build new native/src/main/c/distill4j_cpu_kernel.c
extra=()
if [ -n "$rev" ]; then
  git show "$rev:native/src/main/c/distill4j_cpu_kernel.c" > "$tmp/old.c"
  cp native/src/main/c/distill4j_cpu.h "$tmp/"
  build old "$tmp/old.c"
  extra=(-DWITH_OLD "$tmp"/old_*.o)
fi
"${CC:-gcc}" -O2 -o "$tmp/cpu_loss_kernel" bench/native/cpu_loss_kernel.c "$tmp"/new_*.o "${extra[@]}" -lm
echo "revision: working tree$([ -n "$rev" ] && echo " (new) against $rev (old)")"
"$tmp/cpu_loss_kernel" "$@"
