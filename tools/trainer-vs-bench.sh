#!/usr/bin/env bash
# The trainer's throughput against `resnet bench train`, measured so that the noise of a shared machine cancels:
# both run at the same time, one per core (taskset), then again with the cores swapped (a crossover: a core that is
# faster than the other favours each side once). A running campaign (tools/campaign.sh) is paused meanwhile
# (SIGSTOP, then SIGCONT; it loses nothing). Prints the trainer's median lap (img/s between evaluations, evaluation
# excluded), the benchmark's figure for ours, their ratio per pair and the geometric mean of the two ratios.
#   tools/trainer-vs-bench.sh [MODEL] [RUNTIME]      # default: resnet20 bf16 (use fp32-cl where bf16 is not native)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-resnet20}
RUNTIME=${2:-bf16}
WORK=$(mktemp -d)
if [ -f campaign/campaign.pid ] && kill -0 "$(cat campaign/campaign.pid)" 2>/dev/null; then
    CAMPAIGN=$(cat campaign/campaign.pid)
    trap 'kill -CONT "$CAMPAIGN"' EXIT
    kill -STOP "$CAMPAIGN"
fi
for pair in "0 1" "1 0"; do
    set -- $pair
    taskset -c "$1" .venv/bin/resnet train --data synthetic --model "$MODEL" --runtime "$RUNTIME" --iterations 400 \
        --eval-every 50 --threads 1 --no-progress --out "$WORK/run$1" > "$WORK/train$1.txt" 2>&1 &
    sleep 8  # the trainer's setup; the benchmark then runs inside the trainer's laps
    taskset -c "$2" .venv/bin/resnet bench train --model "$MODEL" --runtime "$RUNTIME" --threads 1 --no-memory \
        --steps 60 --rounds 6 > "$WORK/bench$2.txt" 2>&1
    wait
    lap=$(grep -o '[0-9.]* img/s$' "$WORK/train$1.txt" | awk '{print $1}' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    ours=$(awk '/^ours /{for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}' "$WORK/bench$2.txt")
    echo "trainer on cpu $1: median lap $lap img/s; bench on cpu $2: ours $ours img/s; bench / trainer $(awk -v a="$ours" -v b="$lap" 'BEGIN {printf "%.3f", a/b}')"
    echo "$ours $lap" >> "$WORK/ratios"
done
awk '{p *= $1/$2; n++} BEGIN {p=1} END {printf "crossover (geometric mean of the two pairs): bench / trainer %.3f\n", p^(1/n)}' "$WORK/ratios"
echo "outputs in $WORK"
