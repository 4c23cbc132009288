"""Summarises fine-tuning results: mean and sample standard deviation over seeds of every
row that `examples/finetune` or `tools/reference/finetune.py` wrote, as a Markdown table.

    python3 tools/results_table.py results/test/*/*.json results/reference/*.json
"""

import json
import statistics
import sys
from collections import defaultdict

METRICS = [
    ("accuracy", "accuracy", lambda v: f"{100 * v:.1f}"),
    ("nll", "NLL", lambda v: f"{v:.3f}"),
    ("ece", "ECE", lambda v: f"{v:.3f}"),
    ("brier", "Brier", lambda v: f"{v:.3f}"),
    ("auroc_msp", "AUROC MSP", lambda v: f"{v:.3f}"),
    ("auroc_entropy", "AUROC entropy", lambda v: f"{v:.3f}"),
    ("auroc_mi", "AUROC MI", lambda v: f"{v:.3f}"),
    ("auroc_msp_multiemo", "MultiEmo AUROC MSP", lambda v: f"{v:.3f}"),
    ("auroc_entropy_multiemo", "MultiEmo AUROC entropy", lambda v: f"{v:.3f}"),
    ("auroc_mi_multiemo", "MultiEmo AUROC MI", lambda v: f"{v:.3f}"),
    ("ms_per_step", "ms / step", lambda v: f"{v:.0f}"),
    ("ms_per_sentence", "ms / sentence", lambda v: f"{v:.1f}"),
]


def cell(values, fmt):
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} ± {fmt(statistics.stdev(values))}"


def main(paths):
    rows = defaultdict(lambda: defaultdict(list))
    seeds = defaultdict(set)
    order = []
    for path in paths:
        run = json.load(open(path))
        if "results" not in run:  # a split file
            continue
        prefix = "torch " if "implementation" in run else ""
        for r in run["results"]:
            name = prefix + r["model"]
            if name not in rows:
                order.append(name)
            seeds[name].add(run["seed"])
            for key, _, _ in METRICS:
                value = r.get(key, run.get(key) if key == "ms_per_step" else None)
                if value is not None:
                    rows[name][key].append(value)
    # Only the columns some run has (MultiEmo only where it was fetched).
    metrics = [m for m in METRICS if any(rows[name][m[0]] for name in order)]
    print("| model | seeds | " + " | ".join(label for _, label, _ in metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    for name in order:
        cells = [cell(rows[name][key], fmt) for key, _, fmt in metrics]
        print(f"| {name} | {len(seeds[name])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
