"""The decoder benchmark's tables from its result JSON: per task, every row (a method's
predictive, its TS twin, IVON at the mean, BLoB at N=0, ...) as mean +- sd over seeds of
accuracy, NLL, ECE and Brier, and the paired difference to AdamW's row of the same seed;
with --shift, a table per shift set (accuracy, NLL, ECE, AUROC by entropy and by MI).
Under each core table, the ECE that a calibrated predictor with AdamW's confidences would
show on that many questions, so that an ECE is read against its noise.

    python3 tools/mcq_tables.py results/mcq/test [--shift]
    python3 tools/mcq_tables.py --summary results/mcq/test
    python3 tools/mcq_tables.py --reliability results/mcq/test
    python3 tools/mcq_tables.py --search results/mcq/search

--summary is the README's table: per task, each posterior's paired differences to AdamW
and to AdamW + TS (mean over seeds, and in how many seeds it is better), beside the
published deltas of the papers we follow.

--reliability pools each predictive's reliability bins over its seeds and lists its
mutual information, its fitted temperature and its run's time a step per seed: what the
reliability diagrams show, in numbers, and what a run cost.

--search lists validation runs one by one (seed 0, a setting each): every row with the
run's setting, its training loss over the first and last 25 steps, and its file.

Prints Markdown, for docs/mcq.md and the README, so that the tables come from the JSON and
cannot drift from it.
"""

import collections
import json
import math
import pathlib
import statistics
import sys

METRICS = [("accuracy", 100, "{:.1f}"), ("nll", 1, "{:.3f}"), ("ece", 100, "{:.1f}"),
           ("brier", 1, "{:.3f}")]
# The paired differences to a baseline that both tables show: metric, scale, format, and
# the sign of a difference that is better (higher accuracy, lower NLL and ECE).
DELTAS = [("accuracy", 100, "{:+.1f}", 1), ("nll", 1, "{:+.3f}", -1),
          ("ece", 100, "{:+.1f}", -1)]
HEADS = {"nll": "NLL", "ece": "ECE", "brier": "Brier"}
SHIFT = [("accuracy", 100, "{:.1f}"), ("nll", 1, "{:.3f}"), ("ece", 100, "{:.1f}"),
         ("auroc_entropy", 1, "{:.3f}"), ("auroc_mi", 1, "{:.3f}")]


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
            # The run's training cost goes with each of its rows.
            out[task][row["model"]][seed] = {**row, "ms_per_step": d.get("ms_per_step")}
    return out


def core(task, rows):
    print(f"\n### {task}\n")
    head = " | ".join(HEADS.get(m, m) for m, _, _ in METRICS)
    print(f"| row | seeds | {head} | Δ accuracy vs AdamW | Δ NLL vs AdamW | Δ ECE vs AdamW |")
    print("|---|---:|" + "---:|" * len(METRICS) + "---:|---:|---:|")
    base = rows.get("AdamW", {})
    for name, by_seed in rows.items():
        cells = [spread([r[m] for r in by_seed.values()], k, f) for m, k, f in METRICS]
        paired = [s for s in by_seed if s in base]
        deltas = []
        for m, k, f, _ in DELTAS:
            d = [k * (by_seed[s][m] - base[s][m]) for s in paired]
            deltas.append(", ".join(f.format(x) for x in d) if name != "AdamW" and d else "")
        print(f"| {name} | {len(by_seed)} | " + " | ".join(cells) + " | " + " | ".join(deltas)
              + " |")


def binomial_gap(n, p):
    """E|k/n - p| for k ~ Binomial(n, p): a calibrated bin's expected distance from its
    confidence, from its size alone (zero where the confidence is 0 or 1)."""
    if p <= 0 or p >= 1:
        return 0.0

    def pmf(k):
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log1p(-p))
    return sum(pmf(k) * abs(k / n - p) for k in range(n + 1))


def ece_floor(row):
    """The ECE that a calibrated predictor with this row's confidences would show on
    average: each bin's accuracy drawn from its confidence, for this many questions. An
    ECE near it says nothing about miscalibration."""
    bins = [b for b in row["reliability"] if b["count"]]
    n = sum(b["count"] for b in bins)
    return sum(b["count"] / n * binomial_gap(b["count"], b["confidence"]) for b in bins)


def floor_note(rows):
    """One line under a core table: AdamW's ECE beside the ECE of a calibrated predictor
    at its confidences."""
    base = rows.get("AdamW", {})
    if not base:
        return
    floor = statistics.mean(100 * ece_floor(r) for r in base.values())
    ece = statistics.mean(100 * r["ece"] for r in base.values())
    print(f"\nA calibrated predictor with AdamW's confidences would show an ECE of "
          f"{floor:.1f} on average on these questions (each bin's binomial noise), "
          f"against AdamW's {ece:.1f}.")


def reliability(data):
    """Per task and predictive (no TS twins), pooled over seeds: each confidence bin's
    questions, mean confidence and accuracy; then each seed's mutual information, the
    temperature its TS twin fitted on validation, and its run's milliseconds a training
    step."""
    for task, rows in sorted(data.items()):
        for name, by_seed in rows.items():
            if name.endswith("+ TS"):
                continue
            print(f"\n### {task}: {name}, pooled over {len(by_seed)} seeds\n")
            print("| confidence bin | questions | mean confidence | accuracy |")
            print("|---|---:|---:|---:|")
            for i, b in enumerate(next(iter(by_seed.values()))["reliability"]):
                pooled = [r["reliability"][i] for r in by_seed.values()]
                n = sum(x["count"] for x in pooled)
                if n:
                    conf = sum(x["confidence"] * x["count"] for x in pooled) / n
                    acc = sum(x["accuracy"] * x["count"] for x in pooled) / n
                    print(f"| {b['lo']:.2f}-{b['hi']:.2f} | {n} | {conf:.2f} | {100 * acc:.0f}% |")
            seeds = sorted(by_seed)
            ts = rows.get(f"{name} + TS", {})
            print("\nmutual information per seed: "
                  + ", ".join(f"{by_seed[s]['mean_mi']:.1e}" for s in seeds)
                  + "; validation temperature per seed: "
                  + ", ".join(f"{ts[s]['temperature']:.3f}" for s in seeds if s in ts)
                  + "; ms a training step per seed: "
                  + ", ".join(f"{by_seed[s]['ms_per_step']:.0f}" for s in seeds)
                  + f" (mean {statistics.mean(by_seed[s]['ms_per_step'] for s in seeds):.0f})")


def shift(task, rows):
    """One table per shifted set: each row's accuracy, NLL and ECE there, and the AUROC of
    telling the set's questions from the test split's by the predictive entropy and by the
    mutual information (a dash for a row whose mutual information is zero: a point
    estimate, whose AUROC by it is 0.5 by construction)."""
    sets = sorted({s for r in rows.values() for row in r.values() for s in row.get("shift", {})})
    for name_of_set in sets:
        print(f"\n### {task}: trained there, evaluated on {name_of_set}\n")
        print("| row | seeds | accuracy | NLL | ECE | AUROC by entropy | AUROC by MI |")
        print("|---|---:|" + "---:|" * len(SHIFT))
        for name, by_seed in rows.items():
            runs = [r["shift"][name_of_set] for r in by_seed.values()
                    if name_of_set in r.get("shift", {})]
            if not runs:
                continue
            point = all(r["mean_mi"] == 0 for r in by_seed.values())
            cells = ["–" if m == "auroc_mi" and point else spread([r[m] for r in runs], k, f)
                     for m, k, f in SHIFT]
            print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


# The posteriors' rows that the summary compares, and the published deltas beside them
# (docs/mcq.md cites them).
SUMMARY_ROWS = ["IVON", "BLoB N=10", "MC dropout N=10", "LoRA-Ensemble M=4"]
PUBLISHED = {
    "IVON": "IVON-LoRA, Llama-3.2-3B, 6 tasks: +1.3 accuracy, -5.4 ECE",
    "BLoB N=10": "BLoB, Llama-2-7B: ECE cut on all six tasks (WG-S 29.8 → 9.4)",
}


def summary(data):
    """Each posterior's paired differences, per task: against AdamW and against AdamW +
    TS, mean over the seeds both have, and the seeds in which the posterior is better
    (higher accuracy, lower NLL and ECE)."""
    print("| task | row | seeds | vs | Δ accuracy | Δ NLL | Δ ECE | better in (acc / NLL / ECE) "
          "| published |")
    print("|---|---|---:|---|---:|---:|---:|---|---|")
    for task, rows in sorted(data.items()):
        for name in SUMMARY_ROWS:
            if name not in rows:
                continue
            for base_name in ["AdamW", "AdamW + TS"]:
                base = rows.get(base_name, {})
                seeds = sorted(set(rows[name]) & set(base))
                if not seeds:
                    continue
                cells, wins = [], []
                for m, k, f, sign in DELTAS:
                    d = [k * (rows[name][s][m] - base[s][m]) for s in seeds]
                    cells.append(f.format(statistics.mean(d)))
                    wins.append(str(sum(1 for x in d if sign * x > 0)))
                note = PUBLISHED.get(name, "") if base_name == "AdamW" else ""
                print(f"| {task} | {name} | {len(seeds)} | {base_name} | " + " | ".join(cells)
                      + f" | {' / '.join(wins)} of {len(seeds)} | {note} |")


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
    if sys.argv[1] == "--summary":
        return summary(load(sys.argv[2]))
    if sys.argv[1] == "--reliability":
        return reliability(load(sys.argv[2]))
    data = load(sys.argv[1])
    print("Accuracy and ECE in points; mean ± sd over seeds; Δ: per seed, against AdamW's row "
          "of the same seed.")
    for task, rows in sorted(data.items()):
        core(task, rows)
        floor_note(rows)
        if "--shift" in sys.argv:
            shift(task, rows)


if __name__ == "__main__":
    main()
