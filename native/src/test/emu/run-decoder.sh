#!/usr/bin/env bash
# Runs every decoder kernel (decoder.cu: embeddings, LayerNorm, RMSNorm, RoPE, the masked causal
# softmax, GELU-tanh, SwiGLU; forward and backward) on the CPU emulation of CUDA
# (include/cuda_emu.h) against a float64 reference of DecoderOps' formulas (decoder_emu.cpp), with
# bit-identical reruns on other grids. Their logic checked without a GPU, not their speed. Needs g++
# (C++17); about a minute. Called by the native module's test phase, beside run.sh (the loss kernels).
set -euo pipefail
command -v g++ >/dev/null 2>&1 || { echo "[native] decoder kernel emulation skipped: no g++"; exit 0; }
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../../main/cuda"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
g++ -std=c++17 -O2 -fno-strict-aliasing -pthread -w -D__CUDA_ARCH__=900 -include "$here/include/cuda_emu.h" -I"$here/include" -I"$src" \
  -o "$work/decoder_emu" "$here/decoder_emu.cpp"
# decoder_emu watches progress as loss_emu does: a case past D4J_EMU_CASE_LIMIT seconds (default
# 600) fails the run, named (exit 124).
echo "[native] decoder kernels on the CPU emulation of CUDA (src/test/emu/decoder_emu.cpp)"
"$work/decoder_emu" || { echo "[native] decoder kernel emulation FAILED (exit $?; 124 = a case hung, named above)" >&2; exit 1; }
