#!/usr/bin/env bash
# Table 6 at the paper's budget in one GPU lease (resnet.experiments.gpu_campaign): runs side by side on the one GPU,
# stopped with a checkpoint before the deadline; summary.json, summary.md, log.txt and runs-N.tar land in $OUT.
#   tools/gpu-campaign.sh --part 1                 # the most valuable runs (ResNet-20/56/110, plain-20/56)
#   tools/gpu-campaign.sh --part 2 --deadline 200  # the rest, and part 1's unfinished runs first
# Data: copy cifar10-train-jpeg.tar.gz into data/ (git-ignored) and carry it. Every option: --help.
# It runs the checkout's own code (src/), with $PYTHON (default python3: on the device machine, the one with torch).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m resnet gpu-campaign "$@"
