#!/usr/bin/env bash
# Start (or resume) the training campaign in the background on one core, for a development session:
#   tools/campaign.sh DATA_DIR [THREADS]   # e.g. tools/campaign.sh data  (a copy of cifar10-train-jpeg.tar.gz)
#   THREADS defaults to 1 (the other core stays free for tests and benchmarks); 2 gives it the whole 2-core machine
#   for stretches of a session that need no measurements (a run resumes at any thread count).
#   .venv/bin/resnet runs             # what is done, running and left
#   kill -TERM "$(cat campaign/campaign.pid)"   # stop: the running run saves its checkpoint
# The campaign runs from a copy of the committed code (campaign/code, `git archive HEAD`), so that edits to the
# checkout during the session never reach the running process, and at a raised priority (nice -10, when allowed), so
# that tests and benchmarks on the other core do not slow it down. Everything lives in campaign/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=$(realpath "${1:?usage: tools/campaign.sh DATA_DIR [THREADS]}")
THREADS=${2:-1}
if [ -f campaign/campaign.pid ] && kill -0 "$(cat campaign/campaign.pid)" 2>/dev/null; then
    echo "the campaign is already running (process $(cat campaign/campaign.pid)); .venv/bin/resnet runs shows it" >&2
    exit 2
fi
mkdir -p campaign
rm -rf campaign/code && mkdir campaign/code
git archive HEAD src | tar -x -C campaign/code
NICE=$(nice -n -10 true 2>/dev/null && echo -10 || echo 0)
PYTHONPATH="$PWD/campaign/code/src" nohup nice -n "$NICE" .venv/bin/python -m resnet campaign \
    --runs "$PWD/campaign/runs" --data cifar10 --data-dir "$DATA_DIR" --threads "$THREADS" >> campaign/campaign.log 2>&1 &
echo $! > campaign/campaign.pid
echo "campaign started (process $!, code $(git rev-parse --short HEAD)); log: campaign/campaign.log"
