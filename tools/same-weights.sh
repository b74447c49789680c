#!/usr/bin/env bash
# Does a restructuring change what training computes? Train the same short deterministic run with the code of two
# revisions and compare the weights bit for bit:
#   tools/same-weights.sh REV_A [REV_B]     # REV_B defaults to the working tree
# Each revision's src/ is taken with `git archive` into a temporary folder and run with this checkout's .venv:
# ResNet-20 on the embedded CIFAR-10 subset, 30 iterations, batch 32, seed 3, --deterministic, one thread, fp32
# (the same on every CPU kind). Prints one SHA-256 over every tensor of each run's last weights; exit 1 if they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: tools/same-weights.sh REV_A [REV_B]}
B=${2:-}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

digest() {  # digest NAME REV: train with REV's code (the working tree if REV is empty), print the weights' SHA-256
    local src="$WORK/$1"
    mkdir -p "$src"
    if [ -n "$2" ]; then git archive "$2" src | tar -x -C "$src"; else cp -r src "$src/"; fi
    PYTHONPATH="$src/src" .venv/bin/python -m resnet train --model resnet20 --data embedded --iterations 30 \
        --eval-every 15 --batch-size 32 --seed 3 --deterministic --threads 1 --runtime fp32 --no-progress \
        --out "$WORK/$1-run" > "$WORK/$1.log" 2>&1 || { cat "$WORK/$1.log" >&2; exit 2; }
    .venv/bin/python - "$WORK/$1-run/last.safetensors" <<'PY'
import hashlib, sys
from safetensors.torch import load_file
weights, h = load_file(sys.argv[1]), hashlib.sha256()
for name in sorted(weights):
    h.update(name.encode()); h.update(weights[name].contiguous().numpy().tobytes())
print(h.hexdigest())
PY
}

a=$(digest a "$A")
b=$(digest b "$B")
echo "${A}: $a"
echo "${B:-working tree}: $b"
[ "$a" = "$b" ] && echo "bit-identical" || { echo "the weights differ"; exit 1; }
