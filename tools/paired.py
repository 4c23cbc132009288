"""Differences to a baseline row, paired by seed: for every other row of the runs given,
the per-seed difference (row minus baseline, on the same split) of NLL, ECE, accuracy and
the Wikipedia MI AUROC, and their mean.

    python3 tools/paired.py AdamW results/overconfident/*/*.json
"""

import json
import statistics
import sys
from collections import defaultdict

KEYS = [("nll", "NLL", 1.0), ("ece", "ECE", 1.0), ("accuracy", "accuracy (points)", 100.0),
        ("auroc_mi", "Wiki AUROC MI", 1.0)]


def main(baseline, paths):
    by_row = defaultdict(dict)
    for path in paths:
        run = json.load(open(path))
        if "results" not in run:  # a split file
            continue
        for r in run["results"]:
            by_row[r["model"]][run["seed"]] = r
    base = by_row.get(baseline)
    if base is None:
        sys.exit(f"no row named {baseline!r}")
    print("| model | paired seeds | " + " | ".join(label for _, label, _ in KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for name, runs in by_row.items():
        seeds = sorted(set(runs) & set(base))
        if name == baseline or not seeds:
            continue
        cells = []
        for key, _, scale in KEYS:
            diffs = [scale * (runs[s][key] - base[s][key]) for s in seeds]
            each = ", ".join(f"{d:+.3f}" for d in diffs)
            cells.append(f"{statistics.mean(diffs):+.3f} ({each})")
        print(f"| {name} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
