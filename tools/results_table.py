"""Summarises fine-tuning results: mean and sample standard deviation over seeds of every
row that `benchmark/examples/finetune` or `tools/reference/finetune.py` wrote, as a Markdown table.

    python3 tools/results_table.py results/test/*/*.json results/reference/*.json
    python3 tools/results_table.py --keys=accuracy,nll,ece results/overconfident/*/*.json

A row is one method in one run directory: a directory holds the seeds of one setting,
so runs pool only within it, and one method run under several settings gets a row for
each, named after its directory. `--keys` keeps those columns (names as in METRICS), in
that order. `--by-run` names every row after its directory, also where its method occurs
in one directory only:

    python3 tools/results_table.py --by-run --keys=nll,auroc_mi results/val/overconfident-ivon-*/*.json
"""

import json
import os
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
    ("peak_rss_mb", "peak MB", lambda v: f"{v:.0f}"),
]
# Columns that are the run's, not the row's.
RUN_LEVEL = {"ms_per_step", "peak_rss_mb"}


def cell(values, fmt):
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} ± {fmt(statistics.stdev(values))}"


def main(args):
    keys, by_run = None, False
    while args and args[0].startswith("--"):
        if args[0].startswith("--keys="):
            keys = args[0].split("=", 1)[1].split(",")
        elif args[0] == "--by-run":
            by_run = True
        else:
            sys.exit(f"unknown option {args[0]}")
        args = args[1:]
    paths = args
    rows = defaultdict(lambda: defaultdict(list))
    seeds = defaultdict(set)
    order = []
    for path in paths:
        run = json.load(open(path))
        if "results" not in run:  # a split file
            continue
        prefix = "torch " if "implementation" in run else ""
        setting = os.path.basename(os.path.dirname(os.path.abspath(path)))
        for r in run["results"]:
            row = (setting, prefix + r["model"])
            if row not in rows:
                order.append(row)
            if run["seed"] in seeds[row]:
                sys.exit(f"{path}: a second run of seed {run['seed']} for {row[1]} in {setting}/")
            seeds[row].add(run["seed"])
            for key, _, _ in METRICS:
                value = r.get(key, run.get(key) if key in RUN_LEVEL else None)
                if value is not None:
                    rows[row][key].append(value)
    # Only the columns some run has (MultiEmo only where it was fetched).
    metrics = [m for m in METRICS if any(rows[row][m[0]] for row in order)]
    if keys is not None:
        by_key = {m[0]: m for m in metrics}
        metrics = [by_key[k] for k in keys if k in by_key]
    print("| model | seeds | " + " | ".join(label for _, label, _ in metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    settings_of = defaultdict(set)
    for setting, name in order:
        settings_of[name].add(setting)
    for row in order:
        setting, name = row
        label = f"{setting}: {name}" if by_run or len(settings_of[name]) > 1 else name
        cells = [cell(rows[row][key], fmt) for key, _, fmt in metrics]
        print(f"| {label} | {len(seeds[row])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
