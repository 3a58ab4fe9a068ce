#!/usr/bin/env bash
# ../shared/device/stage.sh, then drops what the GPU machine never loads from the staged jars, so
# that .device stays well under the 64 MiB a device call carries (61 MiB before, 53 after, eighth session):
# the OpenBLAS natives jar's JNI wrappers and headers (we call libopenblas.so.0 through the FFM API,
# NativeLibraries extracts only it and its runtime libraries): about 7.5 MB; and the tokenizers
# jar's libraries for other platforms than linux-x86_64: about 12 MB.
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
# DJL's tokenizers jar (18 MB) carries the Rust library for five platforms; the GPU machine is
# linux-x86_64, so the other four go (about 12 MB less).
for jar in .device/lib/tokenizers-*.jar; do
  [ -f "$jar" ] || continue
  zip -q -d "$jar" 'native/lib/linux-aarch64/*' 'native/lib/osx-*' 'native/lib/win-*' || true
done
size=$(du -sm .device | cut -f1)
echo "stage-device: .device is $size MiB (a device call carries 64 MiB with the working tree)"
[ "$size" -le 60 ] || { echo "stage-device: .device is still over 60 MiB after trimming" >&2; exit 1; }
