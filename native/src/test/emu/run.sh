#!/usr/bin/env bash
# Runs every fused loss kernel (warp, block, clusters, re-reading, pipelined block and clusters,
# split; their reverse KL / JSD twins) on the CPU emulation of CUDA (include/cuda_emu.h) against a
# float64 reference (loss_emu.cpp): their logic checked without a GPU, not their speed
# or races that only the GPU's weaker memory ordering would show. Needs g++ (C++17); about two minutes.
#   bash native/src/test/emu/run.sh                         (D4J_EMU_ONLY=split: one regime's cases only)
set -euo pipefail
command -v g++ >/dev/null 2>&1 || { echo "[native] loss kernel emulation skipped: no g++"; exit 0; }
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../../main/cuda"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$src/common.cuh" "$work/"
# dynamic shared memory: the emulated block's buffer instead of an extern array
sed 's|extern __shared__ float4 d4j_kd_smem\[\];|float4* d4j_kd_smem = (float4*)emuDynamicShared();|' "$src/distill_loss.cu" > "$work/distill_loss_emu.cu"
grep -q "emuDynamicShared" "$work/distill_loss_emu.cu" || { echo "emu: the dynamic shared memory declaration moved; update run.sh" >&2; exit 1; }
# __CUDA_ARCH__=900: the cluster kernels are compiled (clusters emulated in cuda_emu.h).
# -fno-strict-aliasing: the kernels read bf16 quads through uint2 (nvcc's idiom; g++ -O2 otherwise
# optimised the re-reading kernel's teacher loads to zeros)
g++ -std=c++17 -O2 -fno-strict-aliasing -pthread -w -D__CUDA_ARCH__=900 -include "$here/include/cuda_emu.h" -I"$here/include" -I"$work" -o "$work/loss_emu" "$here/loss_emu.cpp"
# A protocol fault shows as a hang (a group waiting on a flag). loss_emu watches progress: a case
# that runs past D4J_EMU_CASE_LIMIT seconds (default 600) fails the run and is named (exit 124).
# No limit on the whole run, which a machine busy with other work may stretch.
echo "[native] loss kernels on the CPU emulation of CUDA (src/test/emu/loss_emu.cpp)"
"$work/loss_emu" || { echo "[native] loss kernel emulation FAILED (exit $?; 124 = a case hung, named above)" >&2; exit 1; }
# The split regime's protocol spans rounds (a ring of statistics, tickets, ready flags): its cases
# again with blocks drifting apart (D4J_EMU_JITTER: a block sleeps at 2% of its barriers and atomics)
if [ -z "${D4J_EMU_ONLY:-}" ]; then
  echo "[native] the split cases again, blocks jittered"
  D4J_EMU_ONLY=split D4J_EMU_JITTER=20 "$work/loss_emu" | grep -E "^FAIL|^HUNG|^slowest|checks passed" \
    || { echo "[native] loss kernel emulation (split, jittered) FAILED" >&2; exit 1; }
fi
