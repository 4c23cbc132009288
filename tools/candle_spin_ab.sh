#!/bin/bash
# The decoder's PIQA training step (AdamW, cloze-mean, 8 steps) under candle's default
# barrier-pool spinning (25,000 pauses before a worker parks) and two short ones, 500 and
# 50, alternated, with a running tools/mcq_runs.py queue paused. (results/speed/
# decoder-piqa-step-amd.md also has an earlier form's "CANDLE_NUM_THREADS=1" rows.)
#
#   bash tools/candle_spin_ab.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
pids=$(pgrep -f "tools/mcq_runs.py|examples/mcq --task" || true)
trap '[ -n "$pids" ] && kill -CONT $pids' EXIT
[ -n "$pids" ] && kill -STOP $pids
for round in 1 2; do
  for cfg in "default" "CANDLE_BARRIER_POOL_SPIN_LIMIT=500" "CANDLE_BARRIER_POOL_SPIN_LIMIT=50"; do
    rm -rf /tmp/spin-out
    if [ "$cfg" = default ]; then envs=""; else envs="$cfg"; fi
    env $envs target/release/examples/mcq --task piqa --scoring cloze-mean --method adamw --lr 1e-3 --steps 8 --limit 1 --eval validation --out /tmp/spin-out > /tmp/spin.log 2>&1
    echo "$round $cfg $(grep -o '"ms_per_step": [0-9.]*' /tmp/spin-out/*.json)"
  done
done
