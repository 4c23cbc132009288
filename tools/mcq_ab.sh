#!/bin/bash
# Two builds of the mcq example alternated on the same short runs (IVON, 6 steps of 4
# questions, its 10-sample and point evaluations on the first 16 validation questions of
# ARC-Easy and PIQA, cloze-mean scoring), printing each run's ms per step, ms per question
# and validation NLL (the NLLs of two correct builds agree).
#
#   bash tools/mcq_ab.sh OLD_MCQ NEW_MCQ [ROUNDS]
#
# An older build: `git worktree add /tmp/old REV`, then `cargo build --release -p
# varlora-benchmark --example mcq` there with its own CARGO_TARGET_DIR. A running
# `tools/mcq_runs.py` queue is paused (SIGSTOP) meanwhile and resumed after.
set -euo pipefail
old=${1:?usage: mcq_ab.sh OLD_MCQ NEW_MCQ [ROUNDS]}
new=${2:?usage: mcq_ab.sh OLD_MCQ NEW_MCQ [ROUNDS]}
rounds=${3:-2}
cd "$(git rev-parse --show-toplevel)"
tmp=$(mktemp -d)
pids=$(pgrep -f "tools/mcq_runs.py|examples/mcq --task" || true)
trap '[ -n "$pids" ] && kill -CONT $pids; rm -rf "$tmp"' EXIT
[ -n "$pids" ] && kill -STOP $pids
for task in arc_easy piqa; do
  for round in $(seq "$rounds"); do
    for which in old new; do
      bin=$old; [ "$which" = new ] && bin=$new
      out="$tmp/$which-$task-$round"
      "$bin" --task "$task" --scoring cloze-mean --method ivon --lr 0.03 --ess 1e7 \
        --steps 6 --limit 16 --eval validation --out "$out" > "$out.log" 2>&1
      python3 - "$out" "$which" "$task" <<'PY'
import glob, json, sys
d = json.load(open(glob.glob(sys.argv[1] + "/*.json")[0]))
rows = " | ".join(f"{r['model']}: {r['ms_per_question']:.0f} ms/question, NLL {r['nll']:.6f}"
                  for r in d["rows"])
print(f"{sys.argv[2]} {sys.argv[3]}: {d['ms_per_step']:.0f} ms/step | {rows}")
PY
    done
  done
done
