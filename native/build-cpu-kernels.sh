#!/usr/bin/env bash
# Builds native/src/main/c/distill4j_cpu.c into libdistill4j_cpu.so, packaged as a class-path resource
# of the org.distill4j.kernels module. Called by Maven (generate-resources) with two arguments:
#   $1  the module's source folder of C files
#   $2  the module's target folder
# Output:
#   $2/classes/org/distill4j/kernels/linux-x86_64/libdistill4j_cpu.so
#   $2/classes/org/distill4j/kernels/cpu-kernels.properties    built=true|false, reason, compiler
# Without a C compiler (or on another platform) the build goes on: the properties say built=false
# and why, and the CPU backend computes the loss with its Java oracle instead (slower, same API).
# One binary for every x86-64: the loss kernel is compiled three times (AVX-512 with 16-lane vectors,
# AVX2 + FMA with 8, SSE2 with 4) and the first call picks the copy for the CPU it runs on.
set -euo pipefail
src="$1"; target="$2"
copies="$(dirname "$0")/cpu-kernel-copies.sh"
# shellcheck source=cpu-kernel-copies.sh
. "$copies"
res="$target/classes/org/distill4j/kernels"
mkdir -p "$res/linux-x86_64"
props="$res/cpu-kernels.properties"
lib="$res/linux-x86_64/libdistill4j_cpu.so"
not_built() {
  rm -f "$lib" "$target/cpu-kernels.stamp"
  printf 'built=false\nreason=%s\n' "$1" > "$props"
  echo "[native] CPU kernels NOT built: $1 (the CPU backend falls back to its Java oracle)"
  exit 0
}
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || not_built "built for Linux x86-64 only, this is $(uname -s)-$(uname -m)"
cc="${CC:-cc}"
command -v "$cc" >/dev/null 2>&1 || cc=gcc
command -v "$cc" >/dev/null 2>&1 || not_built "no C compiler (CC, cc or gcc) found"
stamp="$target/cpu-kernels.stamp"
if [ -f "$lib" ] && [ -f "$stamp" ] && [ -z "$(find "$src" "$0" "$copies" -newer "$stamp" -print -quit)" ]; then
  echo "[native] CPU kernels up to date"
  exit 0
fi
version="$("$cc" --version | head -1)"
tmp="$lib.tmp.$$"
# The stamp carries the time the build STARTED: a source edited while it compiles is newer than
# the stamp, so the next build compiles it (a stamp touched at the end hid such an edit).
started="$stamp.started.$$"
touch "$started"
trap 'rm -f "$started"' EXIT   # a failed build leaves no stamp behind
obj="$target/cpu-kernels"
mkdir -p "$obj"
# The kernel once per instruction set (cpu-kernel-copies.sh), then the entry points for the baseline.
compile_cpu_kernel_copies "$cc" "$src" "$src/distill4j_cpu_kernel.c" "$obj" d4j_cpu_kd_rows_
"$cc" "${cpu_kernel_flags[@]}" -I"$src" -march=x86-64 -c -o "$obj/entry.o" "$src/distill4j_cpu.c"
"$cc" -shared -Wl,-z,defs -Wl,-soname,libdistill4j_cpu.so -o "$tmp" "$obj/entry.o" "$obj/avx512.o" "$obj/avx2.o" "$obj/sse2.o" -lm
mv "$tmp" "$lib"
{
  echo "built=true"
  echo "compiler=$version"
  echo "isa=avx512 avx2 sse2"
} > "$props"
mv -f "$started" "$stamp"
echo "[native] CPU kernels ok: $(wc -c < "$lib") bytes ($version)"
