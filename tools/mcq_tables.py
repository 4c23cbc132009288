"""The decoder benchmark's tables from its result JSON: per task, every row (a method's
predictive, its TS twin, IVON at the mean, BLoB at N=0, ...) as mean +- sd over seeds of
accuracy, NLL, ECE and Brier, and the paired difference to AdamW's row of the same seed;
with --shift, the shift sets' columns (accuracy, ECE, AUROC by entropy and by MI).

    python3 tools/mcq_tables.py results/mcq/test [--shift]
    python3 tools/mcq_tables.py --search results/mcq/search

--search lists validation runs one by one (seed 0, a setting each): every row with the
run's setting, its training loss over the first and last 25 steps, and its file.

Prints Markdown, for docs/mcq.md and the README, so that the tables come from the JSON and
cannot drift from it.
"""

import collections
import json
import pathlib
import statistics
import sys

METRICS = [("accuracy", 100, "{:.1f}"), ("nll", 1, "{:.3f}"), ("ece", 100, "{:.1f}"),
           ("brier", 1, "{:.3f}")]
SHIFT = [("accuracy", 100, "{:.1f}"), ("ece", 100, "{:.1f}"), ("auroc_entropy", 1, "{:.3f}"),
         ("auroc_mi", 1, "{:.3f}")]


def spread(values, scale, fmt):
    values = [v * scale for v in values]
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def load(folder):
    """{task (scoring): {row name: {seed: row}}}, from each run's arguments."""
    out = collections.defaultdict(lambda: collections.defaultdict(dict))
    for path in sorted(pathlib.Path(folder).glob("*.json")):
        d = json.loads(path.read_text())
        seed = d["args"]["seed"]
        task = f"{d['args']['task']} ({d['args']['scoring']})"
        for row in d["rows"]:
            if seed in out[task][row["model"]]:
                raise SystemExit(f"{path}: {task} / {row['model']} / seed {seed} twice")
            out[task][row["model"]][seed] = row
    return out


def core(task, rows):
    print(f"\n### {task}\n")
    head = " | ".join(m for m, _, _ in METRICS)
    print(f"| row | seeds | {head} | Δ accuracy vs AdamW | Δ ECE vs AdamW |")
    print("|---|---:|" + "---:|" * len(METRICS) + "---:|---:|")
    base = rows.get("AdamW", {})
    for name, by_seed in rows.items():
        cells = [spread([r[m] for r in by_seed.values()], k, f) for m, k, f in METRICS]
        paired = [s for s in by_seed if s in base]
        deltas = []
        for m in ["accuracy", "ece"]:
            d = [100 * (by_seed[s][m] - base[s][m]) for s in paired]
            deltas.append(", ".join(f"{x:+.1f}" for x in d) if name != "AdamW" and d else "")
        print(f"| {name} | {len(by_seed)} | " + " | ".join(cells) + " | " + " | ".join(deltas)
              + " |")


def shift(task, rows):
    sets = sorted({s for r in rows.values() for row in r.values() for s in row.get("shift", {})})
    if not sets:
        return
    print(f"\n### {task}: under shift\n")
    heads = [f"{s} {m}" for s in sets for m, _, _ in SHIFT]
    print("| row | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for name, by_seed in rows.items():
        cells = [spread([r["shift"][s][m] for r in by_seed.values()], k, f)
                 for s in sets for m, k, f in SHIFT]
        print(f"| {name} | " + " | ".join(cells) + " |")


def num(x):
    """1e6 rather than 1e+06."""
    return f"{x:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def setting(args):
    """A run's method and the settings that the search varies, as the docs write them."""
    parts = [f"lr {num(args['lr'])}"]
    if args["method"] == "ivon":
        parts.append(f"ess {num(args['ess'])}")
    if args["method"] == "blob":
        parts.append(f"KL rate {num(args['kl_lr'])}")
    return ", ".join(parts)


def search(folder):
    runs = []
    for path in sorted(pathlib.Path(folder).glob("*.json")):
        d = json.loads(path.read_text())
        a = d["args"]
        runs.append(((a["task"], a["scoring"], a["method"], a["lr"], a.get("ess"),
                      a.get("kl_lr")), path.name, d))
    print("| task | scoring | row | setting | questions | accuracy | NLL | ECE | Brier "
          "| training loss, first → last 25 steps | file |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for _, name, d in sorted(runs, key=lambda r: r[0]):
        a, loss = d["args"], d["train_loss"]
        trend = (f"{statistics.mean(loss[:25]):.3f} → {statistics.mean(loss[-25:]):.3f}"
                 if loss else "")
        # A temperature is fitted on test runs only (the first validation run, made before
        # that, also holds a "+ TS" row fitted on itself).
        for row in (r for r in d["rows"] if not r["model"].endswith("+ TS")):
            print(f"| {a['task']} | {a['scoring']} | {row['model']} | {setting(a)} "
                  f"| {row['questions']} | {100 * row['accuracy']:.1f}% | {row['nll']:.3f} "
                  f"| {100 * row['ece']:.1f} | {row['brier']:.3f} | {trend} | {name} |")


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    if sys.argv[1] == "--search":
        return search(sys.argv[2])
    data = load(sys.argv[1])
    print("Accuracy and ECE in points; mean ± sd over seeds; Δ: per seed, against AdamW's row "
          "of the same seed.")
    for task, rows in sorted(data.items()):
        core(task, rows)
        if "--shift" in sys.argv:
            shift(task, rows)


if __name__ == "__main__":
    main()
