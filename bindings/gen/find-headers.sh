#!/usr/bin/env bash
# Prints the include folders that hold cuda.h, cublas_v2.h, cublasLt.h, cudnn.h, cblas.h,
# oneapi/dnnl/dnnl.h, omp.h and our own distill4j_cpu.h (native/src/main/c), one a line.
# Order: $DISTILL4J_INCLUDE (colon-separated), $CUDA_HOME/include, /usr/local/cuda*/include, NVIDIA's
# Python wheels (nvidia/cu13/include, nvidia/cudnn/include) in the active and usual site-packages,
# the OpenBLAS and oneDNN natives jars' include/ (extracted into $TMPDIR), gcc's own include folder
# (omp.h), and /usr/include.
set -uo pipefail
cands=()
IFS=: read -ra extra <<< "${DISTILL4J_INCLUDE:-}"
cands+=("${extra[@]}")
[ -n "${CUDA_HOME:-}" ] && cands+=("$CUDA_HOME/include")
for d in /usr/local/cuda/include /usr/local/cuda-*/include; do cands+=("$d"); done
sites=()
for py in python3 "${VIRTUAL_ENV:-/nonexistent}/bin/python3"; do
  command -v "$py" >/dev/null 2>&1 || continue
  s="$("$py" -c 'import site,sys; print("\n".join(site.getsitepackages()+[site.getusersitepackages()]))' 2>/dev/null)" || continue
  while IFS= read -r l; do sites+=("$l"); done <<< "$s"
done
for s in "${sites[@]}" "${DISTILL4J_PYTHON_SITE:-/nonexistent}"; do
  cands+=("$s/nvidia/cu13/include" "$s/nvidia/cudnn/include")
done
jar="$(ls ~/.m2/repository/org/bytedeco/openblas/*/openblas-*-linux-x86_64.jar 2>/dev/null | sort -V | tail -1)"
if [ -n "$jar" ]; then
  out="${TMPDIR:-/tmp}/distill4j-openblas-include"
  if [ ! -f "$out/cblas.h" ]; then
    mkdir -p "$out" && (cd "$out" && unzip -o -q -j "$jar" 'org/bytedeco/openblas/linux-x86_64/include/*' 2>/dev/null)
  fi
  cands+=("$out")
fi
jar="$(ls ~/.m2/repository/org/bytedeco/dnnl/*/dnnl-*-linux-x86_64.jar 2>/dev/null | sort -V | tail -1)"
if [ -n "$jar" ]; then
  out="${TMPDIR:-/tmp}/distill4j-dnnl-include-$(basename "$jar" .jar)"
  if [ ! -f "$out/oneapi/dnnl/dnnl.h" ]; then
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/distill4j-dnnl-XXXXXX")"
    (cd "$tmp" && unzip -o -q "$jar" 'org/bytedeco/dnnl/linux-x86_64/include/*' 2>/dev/null) \
      && mkdir -p "$out" && cp -r "$tmp/org/bytedeco/dnnl/linux-x86_64/include/." "$out/"
    rm -rf "$tmp"
  fi
  cands+=("$out")
fi
command -v gcc >/dev/null 2>&1 && cands+=("$(gcc -print-file-name=include)")
cands+=(/usr/include /usr/include/x86_64-linux-gnu /usr/include/openblas)
cands+=("$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/native/src/main/c")
seen=""
for h in cuda.h cublas_v2.h cublasLt.h cudnn.h cblas.h oneapi/dnnl/dnnl.h omp.h distill4j_cpu.h; do
  for d in "${cands[@]}"; do
    if [ -n "$d" ] && [ -f "$d/$h" ]; then
      case ":$seen:" in *":$d:"*) ;; *) echo "$d"; seen="$seen:$d";; esac
      break
    fi
  done
done
