#!/usr/bin/env bash
# Start (or resume) the training campaign in the background, one process per core:
#   tools/campaign.sh DATA_DIR [PROCESSES]   # e.g. tools/campaign.sh data  (a copy of cifar10-train-jpeg.tar.gz)
#   PROCESSES defaults to the number of cores; each runs with one thread and trains its own run of the shared plan
#   (a run has one writer: a process skips the runs another is training).
#   .venv/bin/resnet runs                     # what is done, running and left
#   tools/campaign.sh stop                    # SIGTERM to every process: each saves its checkpoint
# The campaign runs from a copy of the committed code (campaign/code, `git archive HEAD`), so that edits to the
# checkout never reach the running processes, and at a raised priority (nice -10, when allowed), so that other work
# on the machine slows it down less. Run directories live in campaign/ (git-ignored); each finished run's record
# is copied to results/records/ (checked in).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = stop ]; then
    for f in campaign/campaign-*.pid; do
        [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null && echo "stopping process $(cat "$f")"
    done
    exit 0
fi
DATA_DIR=$(realpath "${1:?usage: tools/campaign.sh DATA_DIR [PROCESSES] | tools/campaign.sh stop}")
PROCESSES=${2:-$(nproc)}
for f in campaign/campaign-*.pid; do
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        echo "the campaign is already running (process $(cat "$f")); .venv/bin/resnet runs shows it" >&2
        exit 2
    fi
done
mkdir -p campaign
rm -rf campaign/code && mkdir campaign/code
git archive HEAD src | tar -x -C campaign/code
NICE=$(nice -n -10 true 2>/dev/null && echo -10 || echo 0)
for i in $(seq 1 "$PROCESSES"); do
    PYTHONPATH="$PWD/campaign/code/src" nohup nice -n "$NICE" .venv/bin/python -m resnet campaign \
        --runs "$PWD/campaign/runs" --records "$PWD/results/records" --data cifar10 --data-dir "$DATA_DIR" \
        --threads 1 >> "campaign/campaign-$i.log" 2>&1 &
    echo $! > "campaign/campaign-$i.pid"
    # Where the kernel groups processes by session (autogroup), nice only orders processes within a group: raise the
    # campaign's group too, so that a test run started from another shell does not take half of each core.
    echo -10 > "/proc/$!/autogroup" 2>/dev/null || true
    echo "campaign process $i started (process $!, code $(git rev-parse --short HEAD)); log: campaign/campaign-$i.log"
    # the next process starts once this one holds its run's lock, so that it takes the next run
    [ "$i" -lt "$PROCESSES" ] && sleep 90
done
