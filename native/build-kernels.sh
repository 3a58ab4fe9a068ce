#!/usr/bin/env bash
# Builds native/src/main/cuda/*.cu into one fatbin, packaged as a class-path resource of the
# org.distill4j.kernels module. Called by Maven (generate-resources) with two arguments:
#   $1  the module's source folder of CUDA files
#   $2  the module's target folder
# Output:
#   $2/classes/org/distill4j/kernels/distill4j.fatbin     SASS sm_80..sm_120 + PTX compute_120
#   $2/classes/org/distill4j/kernels/kernels.properties    built=true|false, reason, nvcc, archs
#   $2/ptxas-report.txt                                    ptxas -v: registers, spills per kernel
# Without nvcc the build goes on: kernels.properties says built=false and why, and the CUDA
# backend reports "kernels not built" instead of launching anything.
# A kernel that spills registers fails the build: spills are a performance bug we never ship.
set -euo pipefail
src="$1"; target="$2"
res="$target/classes/org/distill4j/kernels"
mkdir -p "$res"
props="$res/kernels.properties"
ARCHS="${DISTILL_CUDA_ARCHS:-80 86 89 90 100 120}"

nvcc_bin=""
if [ -n "${NVCC:-}" ]; then
  [ -x "$NVCC" ] && nvcc_bin="$NVCC"   # an explicit NVCC that is not executable means "no nvcc"
else
  for c in "$(command -v nvcc 2>/dev/null || true)" "${CUDA_HOME:-/nonexistent}/bin/nvcc" /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [ -n "$c" ] && [ -x "$c" ] && { nvcc_bin="$c"; break; }
  done
fi
if [ -z "$nvcc_bin" ]; then
  rm -f "$res/distill4j.fatbin"
  if [ -n "${NVCC:-}" ]; then reason="nvcc not found (NVCC=$NVCC is not executable)"
  else reason="nvcc not found (looked on PATH, \$CUDA_HOME/bin, /usr/local/cuda*/bin)"; fi
  printf 'built=false\nreason=%s\n' "$reason" > "$props"
  rm -f "$target/kernels.stamp"
  echo "[native] nvcc not found: kernels NOT built (the CPU backend is unaffected)"
  exit 0
fi

# One translation unit (distill4j.cu) includes every kernel file; check none was forgotten.
srcs=("$src/distill4j.cu")
for f in "$src"/*.cu; do
  b="$(basename "$f")"
  [ "$b" = distill4j.cu ] && continue
  grep -q "#include \"$b\"" "$src/distill4j.cu" || { echo "[native] $b is not included by distill4j.cu" >&2; exit 1; }
done
fatbin="$res/distill4j.fatbin"
stamp="$target/kernels.stamp"
# Rebuild only when a source, header or this script is newer than the last build.
if [ -f "$fatbin" ] && [ -f "$stamp" ] && [ -z "$(find "$src" "$0" -newer "$stamp" -print -quit)" ]; then
  echo "[native] kernels up to date"
  exit 0
fi

gencode=()
last="${ARCHS##* }"
for a in $ARCHS; do
  if [ "$a" = "$last" ]; then
    gencode+=(-gencode "arch=compute_$a,code=[sm_$a,compute_$a]")   # SASS + PTX for forward compat
  else
    gencode+=(-gencode "arch=compute_$a,code=sm_$a")
  fi
done
version="$("$nvcc_bin" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
echo "[native] nvcc $version: $(ls "$src"/*.cu | wc -l) source file(s) -> distill4j.fatbin for sm_{${ARCHS// /,}} + compute_$last"
tmp="$fatbin.tmp.$$"
# The stamp carries the time the build STARTED: a source edited while it compiles is newer than
# the stamp, so the next build compiles it (a stamp touched at the end hid such an edit).
started="$stamp.started.$$"
touch "$started"
trap 'rm -f "$started"' EXIT   # a failed build leaves no stamp behind
report="$target/ptxas-report.txt"
# -compress-all: the driver inflates the fatbin at load; 27 MB of SASS and PTX become ~3 MB (the
# loss kernels come in KL and reverse-KL/JSD twins since the fourth session).
"$nvcc_bin" -fatbin -O3 -std=c++17 -Xfatbin=-compress-all -Xptxas -v -I"$src" "${gencode[@]}" -o "$tmp" "${srcs[@]}" 2> "$report.tmp" \
  || { cat "$report.tmp" >&2; rm -f "$tmp"; exit 1; }
mv "$report.tmp" "$report"
mv "$tmp" "$fatbin"
cp "$report" "$res/ptxas-report.txt"   # ships in the jar beside the fatbin

spills="$(grep -E '[1-9][0-9]* bytes spill (stores|loads)' "$report" || true)"
if [ -n "$spills" ]; then
  echo "[native] register spills found (see $report):" >&2
  echo "$spills" >&2
  exit 1
fi
kernels="$(grep -o "Compiling entry function '[^']*'" "$report" | sort -u | sed "s/.*'\(.*\)'/\1/" | tr '\n' ' ')"
{
  echo "built=true"
  echo "nvcc=$version"
  echo "archs=$ARCHS"
  echo "ptx=compute_$last"
  echo "kernels=${kernels% }"
} > "$props"
mv -f "$started" "$stamp"
echo "[native] ok: $(wc -c < "$fatbin") bytes; no spills; report at $report"
