#!/bin/bash
# The decoder's PIQA training step (AdamW, cloze-mean, 8 steps) under candle's default
# barrier-pool spinning, a short spin (500) and no pool (one thread for candle's own
# elementwise ops), alternated, with a running tools/mcq_runs.py queue paused.
#
#   bash tools/candle_spin_ab.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
pids=$(pgrep -f "tools/mcq_runs.py|examples/mcq --task" || true)
trap '[ -n "$pids" ] && kill -CONT $pids' EXIT
[ -n "$pids" ] && kill -STOP $pids
for round in 1 2; do
  for cfg in "default" "CANDLE_BARRIER_POOL_SPIN_LIMIT=500" "CANDLE_NUM_THREADS=1"; do
    rm -rf /tmp/spin-out
    if [ "$cfg" = default ]; then envs=""; else envs="$cfg"; fi
    env $envs target/release/examples/mcq --task piqa --scoring cloze-mean --method adamw --lr 1e-3 --steps 8 --limit 1 --eval validation --out /tmp/spin-out > /tmp/spin.log 2>&1
    echo "$round $cfg $(grep -o '"ms_per_step": [0-9.]*' /tmp/spin-out/*.json)"
  done
done
