#!/usr/bin/env bash
# Table 6 at the paper's budget on one GPU within a job's time limit (resnet.campaign.gpu): runs side by side on the
# one GPU, stopped with a checkpoint before the deadline; summary.json, summary.md, log.txt and runs-N.tar land in
# OUT_DIR. The same command, in the next job, resumes.
#   tools/gpu-campaign.sh --out OUT_DIR --deadline 3500 --part 1   # the most valuable runs (ResNet-20/56/110, plain-20/56)
#   tools/gpu-campaign.sh --out OUT_DIR --deadline 3500 --part 2   # the rest, and part 1's unfinished runs first
# --deadline: the seconds this command may take (e.g. a one-hour Slurm job's limit, less its set-up). Data: copy
# cifar10-train-jpeg.tar.gz into data/ (git-ignored). Every option: --help.
# It runs the checkout's own code (src/), with $PYTHON (default python3: the one with torch).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m resnet gpu-campaign "$@"
