#!/usr/bin/env bash
# ../shared/device/stage.sh, then drops what the GPU machine never loads from the staged jars, so
# that .device stays well under the 64 MiB a device call carries (61 MiB before, 53 after, eighth session):
# the OpenBLAS natives jar's JNI wrappers and headers (we call libopenblas.so.0 through the FFM API,
# NativeLibraries extracts only it and its runtime libraries): about 7.5 MB; and the tokenizers
# with their dependencies (below).
#   bash bench/stage-device.sh [--no-build]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# stage.sh fails when .device is over 60 MiB before we trim it (the fatbin grows with every kernel:
# 61 MiB in the eighth session); a staging that got as far as the launcher is complete, so go on
# and check the size after trimming instead.
bash ../shared/device/stage.sh "$@" || { [ -f .device/on-device.sh ] && [ -f .device/jre.tgz ] || exit 1; }
for jar in .device/lib/openblas-*-linux-x86_64.jar; do
  [ -f "$jar" ] || continue
  zip -q -d "$jar" 'org/bytedeco/openblas/linux-x86_64/libjniopenblas*' 'org/bytedeco/openblas/linux-x86_64/include/*' || true
done
# The oneDNN and OpenCL natives jars (28 MB: the CPU backend's matmul engine, issue 23) are not
# needed on the GPU machine either: its CPU tests run on OpenBLAS, the fallback, without them.
rm -f .device/lib/dnnl-*.jar .device/lib/opencl-*.jar
# The tokenizers (DJL's binding of the Rust library, 18 MB, and its dependencies: 11 MB once its
# other platforms' libraries are gone) are never loaded by a GPU test or a GPU session's commands,
# which tokenize nothing; .device runs on the class path, where core's `requires ai.djl.tokenizers`
# is not resolved, so they can stay behind (67 -> 56 MiB on 2026-12-06).
rm -f .device/lib/tokenizers-*.jar .device/lib/api-[0-9]*.jar .device/lib/gson-*.jar .device/lib/error_prone_annotations-*.jar \
      .device/lib/jna-*.jar .device/lib/commons-compress-*.jar .device/lib/commons-codec-*.jar .device/lib/commons-io-*.jar \
      .device/lib/slf4j-api-*.jar
# ...and so are the tokenizer fixtures in core's test classes (1.2 MB compressed).
[ -f .device/lib/core-test-classes.jar ] && { zip -q -d .device/lib/core-test-classes.jar 'fixtures/tok/*' || true; }
# A device call carries .device with the working tree (tracked files and untracked ones git does
# not ignore): 64 MiB in all. Leave 1 MiB of room.
bytes=$(du -sb .device | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "stage-device: .device is $(mib "$bytes") MiB, the working tree $(mib "$tree") MiB: $(mib $((bytes + tree))) of the 64 MiB a device call carries"
[ $((bytes + tree)) -le $((63 * 1048576)) ] || { echo "stage-device: .device and the working tree are over 63 MiB after trimming" >&2; exit 1; }
