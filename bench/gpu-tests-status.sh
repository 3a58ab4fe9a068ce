#!/usr/bin/env bash
# Which GPU tests (tag "gpu") have run on a GPU, at which commit, and which have not run since
# they or the code they exercise changed. Derived from git, not typed:
#   bash bench/gpu-tests-status.sh [COMMIT]
# COMMIT defaults to the last line of bench/gpu-verified.txt ("<commit> <date> <device>: <what passed>"),
# which a GPU session appends to after a green gpu-verify.sh run. For each test method of each
# tests/.../Gpu*Test.java it prints one of
#   ran          the method existed at COMMIT and neither its class nor the CUDA code changed since
#   changed      it ran at COMMIT, but its class file or the CUDA code (core/.../cuda,
#                native/src/main/cuda, bindings/.../kernels) changed since: not re-run
#   never ran    the method is newer than COMMIT
set -euo pipefail
cd "$(dirname "$0")/.."
verified_file=bench/gpu-verified.txt
line="$(grep -v '^#' "$verified_file" | tail -1)"
commit="${1:-${line%% *}}"
git cat-file -e "$commit^{commit}" 2>/dev/null || { echo "gpu-tests-status: $commit is not a commit of this repository" >&2; exit 2; }
# The decoder's CUDA path lives in core/.../lm too: CudaDecoderOps, the checks it shares with the CPU, and DecoderModel, which drives it.
lm=core/src/main/java/org/distill4j/core/lm
cuda_paths=(core/src/main/java/org/distill4j/core/cuda native/src/main/cuda bindings/src/main/java/org/distill4j/bindings/kernels
  "$lm/CudaDecoderOps.java" "$lm/DecoderOpChecks.java" "$lm/DecoderDeviceOps.java" "$lm/DecoderModel.java")
cuda_changes="$(git log --oneline "$commit"..HEAD -- "${cuda_paths[@]}" | wc -l)"
echo "last GPU verification: ${line}"
echo "since $commit: $cuda_changes commit(s) changed the CUDA code (${cuda_paths[*]})"
methods() { # the @Test and @TestFactory methods of a Java source on stdin
  awk '/@Test/{t=1; next} t && /(void|Stream<DynamicTest>) [A-Za-z0-9_]+\(/{match($0, /(void|Stream<DynamicTest>) [A-Za-z0-9_]+\(/); m=substr($0, RSTART, RLENGTH-1); sub(/.* /, "", m); print m; t=0}'
}
ran=0; changed=0; never=0
for f in tests/src/test/java/org/distill4j/tests/Gpu*Test.java; do
  cls="$(basename "$f" .java)"
  class_changes="$(git log --oneline "$commit"..HEAD -- "$f" | wc -l)"
  before="$(git show "$commit:$f" 2>/dev/null | methods || true)"
  while read -r m; do
    [ -n "$m" ] || continue
    if ! grep -qx "$m" <<<"$before"; then
      state="never ran"; never=$((never + 1))
    elif [ "$class_changes" -gt 0 ] || [ "$cuda_changes" -gt 0 ]; then
      state="changed (class: $class_changes commit(s) since)"; changed=$((changed + 1))
    else
      state="ran"; ran=$((ran + 1))
    fi
    printf '  %-26s %-52s %s\n' "$cls" "$m" "$state"
  done < <(methods < "$f")
done
echo "GPU tests now: $((ran + changed + never)); ran at $commit and unchanged since: $ran; changed since: $changed; never ran: $never"
