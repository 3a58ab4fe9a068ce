#!/usr/bin/env bash
# Regenerates the FFM header classes under bindings/src/main/java from bindings/gen/*.spec.
#   bindings/gen/generate.sh           write them
#   bindings/gen/generate.sh --check   exit 1 if what is committed differs (run by the build's tests)
# Needs python3 and gcc, and the headers: cuda.h (CUDA toolkit), cublas/cudnn headers (CUDA
# toolkit or NVIDIA's wheels: pip install nvidia-cublas nvidia-cudnn-cu13), cblas.h (from the
# OpenBLAS natives jar in the local Maven repository, or the system). Include folders are found by
# bindings/gen/find-headers.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
includes="$("$here/find-headers.sh")"
args=()
while IFS= read -r d; do [ -n "$d" ] && args+=(-I "$d"); done <<< "$includes"
exec python3 "$here/bindgen.py" "$here"/*.spec --out "$root/bindings/src/main/java" "${args[@]}" "$@"
