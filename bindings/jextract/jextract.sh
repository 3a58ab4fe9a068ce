#!/usr/bin/env bash
# Regenerates Distill4J's bindings with real jextract (https://jdk.java.net/jextract/), wherever it
# is installed. Our build machines cannot fetch jextract, so the committed header classes are made
# by bindings/gen/bindgen.py in jextract's shape from the same symbol lists; this script is how to
# compare the two, or to switch to jextract's output.
#
#   bindings/jextract/jextract.sh [OUTPUT_DIR]    (default: bindings/target/jextract)
#
# The include lists are the *.args files beside this script (jextract @argfiles: target package,
# header class name, library, and one --include-function/--include-constant/--include-typedef per
# symbol). bindgen.py writes them from bindings/gen/*.spec, so the two generators always ask for
# the same symbols. Headers are found by bindings/gen/find-headers.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/bindings/target/jextract}"
command -v jextract >/dev/null 2>&1 || { echo "jextract.sh: jextract not found on PATH (get it from jdk.java.net/jextract)" >&2; exit 2; }
inc=()
while IFS= read -r d; do [ -n "$d" ] && inc+=(-I "$d"); done < <("$root/bindings/gen/find-headers.sh")
mkdir -p "$out"
for args in "$here"/*.args; do
  name="$(basename "$args" .args)"
  spec="$(grep -l "^class $name\$" "$root"/bindings/gen/*.spec)"
  header="$(awk '/^header /{print $2}' "$spec")"
  echo "jextract: $header -> $name"
  jextract "${inc[@]}" --output "$out" @"$args" "$header"
done
echo "jextract: sources in $out"
