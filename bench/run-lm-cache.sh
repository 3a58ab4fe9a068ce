#!/usr/bin/env bash
# Decoder distillation with the live teacher against the per-token teacher cache (issue 22), through
# `distill distill`, on a GPT-2-shaped teacher and student with the full 50,257-id vocabulary:
# random weights (the teacher: one `distill train` step from its config), random token ids (the
# time does not depend on them). Each round runs, in this order and each in its own process:
#   live     the teacher runs every step
#   build    --teacher-cache file:... (top-64 by default, bf16 or f32 by DTYPE): computed, then trained
#   reused   the same command again: the file matches and is reused
# and prints each run's epoch times (from metrics.jsonl; epoch 1 includes the JIT's warm-up), the
# cache's log line (k, bytes per token, size, seconds), then the medians of the second epochs.
#   bench/run-lm-cache.sh [rounds]
# TEACHER_LAYERS (default 6), STUDENT_LAYERS (2), EMBD (768), HEADS (12), SEQ (T, 128), WINDOWS per
# epoch (16), BATCH (4), EPOCHS (3), DTYPE (bf16), TOPK (empty: the default, 64 above 4096 ids);
# DISTILL the launcher (default ./distill); PYTHON a python3 for the token file (standard library only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
DISTILL=${DISTILL:-./distill}
PYTHON=${PYTHON:-python3}
TEACHER_LAYERS=${TEACHER_LAYERS:-6}
STUDENT_LAYERS=${STUDENT_LAYERS:-2}
EMBD=${EMBD:-768}
HEADS=${HEADS:-12}
SEQ=${SEQ:-128}
WINDOWS=${WINDOWS:-16}
BATCH=${BATCH:-4}
EPOCHS=${EPOCHS:-3}
DTYPE=${DTYPE:-bf16}
TOPK=${TOPK:-}
VOCAB=50257
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

config() { # $1 folder, $2 layers
    mkdir -p "$1"
    cat >"$1/config.json" <<EOF
{"model_type": "gpt2", "vocab_size": $VOCAB, "n_embd": $EMBD, "n_layer": $2, "n_head": $HEADS, "n_positions": 1024,
 "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": true,
 "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "initializer_range": 0.02}
EOF
}
config "$work/teacher-config" "$TEACHER_LAYERS"
config "$work/student" "$STUDENT_LAYERS"
"$PYTHON" - "$work/tokens.bin" $((WINDOWS * SEQ + 1)) $VOCAB <<'EOF'
import random, struct, sys
path, n, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
with open(path, "wb") as f:  # llm.c .bin: 256 int32 header (magic, version 1, count), then uint16 ids
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack("<%dH" % n, *(rng.randrange(vocab) for _ in range(n))))
EOF
"$DISTILL" train --model "$work/teacher-config" --data "tokens:$work/tokens.bin" --seq-len "$SEQ" --batch 1 --max-steps 1 --lr 1e-4 \
    --out "$work/teacher" >/dev/null
echo "teacher: gpt2, $TEACHER_LAYERS layers, n_embd $EMBD; student: $STUDENT_LAYERS layers; vocabulary $VOCAB; $WINDOWS windows of T $SEQ per epoch," \
    "batch $BATCH, $EPOCHS epochs; cache dtype $DTYPE, topk ${TOPK:-default}; $(nproc) cores; $(date -u '+%F %T UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)"
epochs() { # epoch durations (s) from a metrics.jsonl's cumulative seconds
    "$PYTHON" -c 'import json,sys
prev=0.0; out=[]
for line in open(sys.argv[1]):
    s=json.loads(line)["seconds"]; out.append("%.2f" % (s-prev)); prev=s
print(" ".join(out))' "$1"
}
second() { echo "$1" | awk '{print $2}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
common=(distill --teacher "$work/teacher" --student "$work/student" --data "tokens:$work/tokens.bin" --seq-len "$SEQ" --batch "$BATCH"
    --epochs "$EPOCHS" --optimizer adamw --lr 1e-4 --seed 1 --divergence kl --temperature 2 --alpha 0.5)
cache=(--teacher-cache "file:$work/cache.safetensors" --teacher-cache-dtype "$DTYPE")
[ -n "$TOPK" ] && cache+=(--teacher-cache-topk "$TOPK")
live_all="" built_all="" reused_all=""
for round in $(seq 1 "$ROUNDS"); do
    rm -f "$work/cache.safetensors"
    "$DISTILL" "${common[@]}" --out "$work/live" >"$work/live.log" 2>&1 || { cat "$work/live.log"; exit 1; }
    "$DISTILL" "${common[@]}" "${cache[@]}" --out "$work/built" >"$work/built.log" 2>&1 || { cat "$work/built.log"; exit 1; }
    "$DISTILL" "${common[@]}" "${cache[@]}" --out "$work/reused" >"$work/reused.log" 2>&1 || { cat "$work/reused.log"; exit 1; }
    l=$(epochs "$work/live/metrics.jsonl"); b=$(epochs "$work/built/metrics.jsonl"); r=$(epochs "$work/reused/metrics.jsonl")
    echo "round $round (load $(cut -d' ' -f1-3 /proc/loadavg)): epochs (s) live [$l], cache built [$b], cache reused [$r]"
    grep -h '^teacher cache:' "$work/built.log" "$work/reused.log" | sed 's/^/    /'
    live_all+="$(second "$l")"$'\n'; built_all+="$(second "$b")"$'\n'; reused_all+="$(second "$r")"$'\n'
done
lm=$(printf '%s' "$live_all" | median); bm=$(printf '%s' "$built_all" | median); rm_=$(printf '%s' "$reused_all" | median)
printf 'median second epoch over %d rounds: live teacher %s s, cache (built run) %s s, cache (reused run) %s s; live / reused %s\n' "$ROUNDS" "$lm" "$bm" "$rm_" \
    "$(awk "BEGIN {printf \"%.2fx\", $lm / $rm_}")"
