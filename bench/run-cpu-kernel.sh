#!/usr/bin/env bash
# The CPU loss kernel's three copies (AVX-512, AVX2, SSE2) timed in C on one thread, optionally
# against the same copies from an earlier revision, alternating in one run (bench/native/cpu_loss_kernel.c):
#   bench/run-cpu-kernel.sh [REV] [ROWS COLS [T]]      e.g. bench/run-cpu-kernel.sh HEAD~3 4096 1000 3
#   bench/run-cpu-kernel.sh --bits REV                  the working tree's copies against REV's, bit for bit
#                                                       (bench/native/cpu_kernel_bits.c; exit 1 when any case differs)
# Built as the library is (native/cpu-kernel-copies.sh). A copy this CPU cannot run crashes the program:
# on a CPU without AVX-512, time the others through JMH (-Ddistill4j.cpu.isa=avx2|sse2) instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rev="" bits=""
if [ "${1:-}" = "--bits" ]; then
  bits=1; shift
  [ $# -eq 1 ] || { echo "usage: bench/run-cpu-kernel.sh --bits REV" >&2; exit 2; }
fi
if [ $# -gt 0 ] && ! [[ "$1" =~ ^[0-9]+$ ]]; then rev="$1"; shift; fi  # a revision, not a row count
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
# shellcheck source=../native/cpu-kernel-copies.sh
. native/cpu-kernel-copies.sh
mkdir -p "$tmp/new" "$tmp/old"
compile_cpu_kernel_copies "${CC:-gcc}" native/src/main/c native/src/main/c/distill4j_cpu_kernel.c "$tmp/new" kd_new_
extra=()
if [ -n "$rev" ]; then
  git show "$rev:native/src/main/c/distill4j_cpu_kernel.c" > "$tmp/old.c"
  compile_cpu_kernel_copies "${CC:-gcc}" native/src/main/c "$tmp/old.c" "$tmp/old" kd_old_
  extra=(-DWITH_OLD "$tmp"/old/*.o)
fi
if [ -n "$bits" ]; then
  "${CC:-gcc}" -O2 -o "$tmp/cpu_kernel_bits" bench/native/cpu_kernel_bits.c "$tmp"/new/*.o "$tmp"/old/*.o -lm
  echo "revision: working tree against $rev, bit for bit"
  "$tmp/cpu_kernel_bits"; exit
fi
"${CC:-gcc}" -O2 -o "$tmp/cpu_loss_kernel" bench/native/cpu_loss_kernel.c "$tmp"/new/*.o "${extra[@]}" -lm
echo "revision: working tree$([ -n "$rev" ] && echo " (new) against $rev (old)")"
"$tmp/cpu_loss_kernel" "$@"
