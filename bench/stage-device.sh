#!/usr/bin/env bash
# ../shared/device/stage.sh, then drops what the GPU machine never loads from the staged jars, so
# that .device stays well under the 64 MiB a device call carries (59.9 MiB before, fifth session):
# the OpenBLAS natives jar's JNI wrappers and headers (we call libopenblas.so.0 through the FFM API,
# NativeLibraries extracts only it and its runtime libraries): about 7.5 MB.
#   bash bench/stage-device.sh [--no-build]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash ../shared/device/stage.sh "$@"
for jar in .device/lib/openblas-*-linux-x86_64.jar; do
  [ -f "$jar" ] || continue
  zip -q -d "$jar" 'org/bytedeco/openblas/linux-x86_64/libjniopenblas*' 'org/bytedeco/openblas/linux-x86_64/include/*' || true
done
echo "stage-device: .device is $(du -sm .device | cut -f1) MiB (a device call carries 64 MiB)"
