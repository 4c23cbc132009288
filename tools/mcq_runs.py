"""The decoder benchmark's runs, one after another, resumable: each run is skipped when its
result JSON already exists, so a queue interrupted at the end of a session goes on where
it stopped in the next.

    python3 tools/mcq_runs.py all [--dry]        # search, then test, one task after another;
                                                 # then LoRA-Ensemble M=4 on PIQA
    python3 tools/mcq_runs.py search [--dry]     # validation runs, seed 0 (two stages below)
    python3 tools/mcq_runs.py best               # per task, scoring and method: the setting
                                                 # of lowest validation NLL
    python3 tools/mcq_runs.py test [--dry]       # the chosen settings, seeds 0-2, test split
    python3 tools/mcq_runs.py reference TASK     # transformers + peft's AdamW there, seed 0

The search has two stages per task. First AdamW at the issue's measured setting (lr 3e-4)
under each scoring: the scoring of AdamW's lowest validation NLL is the task's; then
AdamW's grid under that scoring. The task is learned when AdamW's best validation accuracy
(any scoring, any rate) is at least 5 points above the larger of chance and the majority
answer (`mcq baselines`); only then do the other methods' grids and the test runs follow,
under the task's scoring only, which halves the CPU the grid costs (the other scorings'
grids could not be chosen). `all` finishes one task's test runs before
the next task's search, so that a table is complete as early as possible.

Results go to runs/mcq/search and runs/mcq/test (git-ignored); the ones reported are
copied to results/mcq/ with the command that made them. Nothing else may be timed while
this runs: it keeps both cores busy.
"""

import itertools
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "examples" / "mcq"
# The tasks; PIQA and ARC-Easy first, the ones its zero-shot measurements say this
# model can learn, so that the core table's first two tasks are complete earliest.
TASKS = ["piqa", "arc_easy", "winogrande", "openbookqa", "boolq"]
# Points of validation accuracy above the larger of chance and the majority answer.
LEARNED_MARGIN = 0.05
SCORINGS = ["lettered", "cloze", "cloze-mean"]
SCORING_SETTING = {"lr": "3e-4"}
# The references' starting points and a few around them (docs/mcq.md). Each method's
# learning rate then grows by a factor of 3 while its best is the largest tried (AdamW's
# over its three rates; IVON's from 0.03 at its best `ess`, BLoB's from 3e-4 at its best
# KL rate), so that no method is held at a rate too small for 200 steps. MC dropout is
# AdamW's recipe with its dropout kept at test time: it takes AdamW's chosen rate rather
# than a search of its own.
RATES = {"adamw": ["1e-4", "3e-4", "1e-3"], "ivon": ["0.03"], "blob": ["3e-4"]}
# The setting each posterior searches at its first rate, before its rate widens.
OTHER = {"ivon": {"ess": ["1e6", "1e7", "1e8"]}, "blob": {"kl-lr": ["0.01", "0.001"]}}


# The flags each method's setting consists of (the runs' JSON holds every flag, the others
# at their defaults, unused).
SETTING_KEYS = {"adamw": ["lr"], "mc-dropout": ["lr"], "ivon": ["lr", "ess"],
                "blob": ["lr", "kl-lr"], "lora-ensemble": ["lr"]}


def scorings(task):
    """The task's scorings to try: BoolQ's choices (" no", " yes") are one token each, so
    its per-token mean is its sum and cloze-mean would repeat cloze's run."""
    return [s for s in SCORINGS if not (task == "boolq" and s == "cloze-mean")]


def args_of(task, scoring, method, setting, seed, split):
    """A run's options, as a dict of mcq's flags (without the dashes) to values."""
    return {"task": task, "scoring": scoring, "method": method, "seed": str(seed),
            "eval": split, **setting}


def command(opts):
    cmd = [str(BIN)]
    for k, v in opts.items():
        cmd += [f"--{k}", v]
    if opts["eval"] == "test" and opts["task"] == "arc_easy":
        cmd.append("--shift")
    return cmd


def same(a, b):
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def done(out_dir, opts):
    """Whether a result JSON in out_dir was made with these options."""
    for path in out_dir.glob("*.json"):
        got = json.loads(path.read_text())["args"]
        if all(same(got.get(k.replace("-", "_")), v) for k, v in opts.items()):
            return True
    return False


def run_all(runs, out_dir, dry):
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [o for o in runs if not done(out_dir, o)]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to go")
    for o in todo:
        cmd = command(o) + ["--out", str(out_dir)]
        print(" ".join(cmd[1:]), flush=True)
        if not dry:
            subprocess.run(cmd, cwd=ROOT, check=True)


SEARCH = ROOT / "runs" / "mcq" / "search"


def searched():
    """Each validation run: its file's name, its arguments and its first row (the
    method's own predictive)."""
    for path in sorted(SEARCH.glob("*.json")):
        d = json.loads(path.read_text())
        yield path.name, d["args"], d["rows"][0]


def chosen():
    """Per (task, scoring, method), the validation run of lowest NLL: (name, args, row)."""
    out = {}
    for name, a, row in searched():
        key = (a["task"], a["scoring"], a["method"])
        if key not in out or row["nll"] < out[key][2]["nll"]:
            out[key] = (name, a, row)
    return out


def scoring_of(task):
    """The task's scoring: that of AdamW's lowest validation NLL over every scoring, or
    None while the first stage has not run under each of them."""
    adamw = {s: row["nll"] for (t, s, m), (_, _, row) in chosen().items()
             if t == task and m == "adamw"}
    if any(s not in adamw for s in scorings(task)):
        return None
    return min(adamw, key=adamw.get)


def search_task(task, dry):
    out = SEARCH
    run_all([args_of(task, s, "adamw", SCORING_SETTING, 0, "validation") for s in scorings(task)],
            out, dry)
    scoring = scoring_of(task)
    if scoring is None:
        return print(f"{task}: the scoring stage has not finished")
    print(f"{task}: {scoring} scoring")
    lr = widen_rate(task, scoring, "adamw", {}, out, dry)
    if lr is None:
        return
    if not learned(task):
        return
    for method, other in OTHER.items():
        (key, values), = other.items()
        first = RATES[method][0]
        run_all([args_of(task, scoring, method, {"lr": first, key: v}, 0, "validation")
                 for v in values], out, dry)
        nll = {v: nll_of(task, scoring, method, {"lr": first, key: v}) for v in values}
        if any(x is None for x in nll.values()):
            continue
        best_value = min(values, key=nll.get)
        widen_rate(task, scoring, method, {key: best_value}, out, dry)
    run_all([args_of(task, scoring, "mc-dropout", {"lr": lr}, 0, "validation")], out, dry)


def nll_of(task, scoring, method, setting):
    """The validation NLL of the run with this setting, or None while it has not run."""
    for _, a, row in searched():
        if (a["task"], a["scoring"], a["method"]) == (task, scoring, method) and all(
                same(a.get(k.replace("-", "_")), v) for k, v in setting.items()):
            return row["nll"]
    return None


def widen_rate(task, scoring, method, fixed, out, dry):
    """The method's runs at `fixed` over its rates, the largest tripled while it is the
    best; the best rate, or None while a run is missing (a dry run)."""
    rates = list(RATES[method])
    while True:
        settings = [{"lr": r, **fixed} for r in rates]
        run_all([args_of(task, scoring, method, st, 0, "validation") for st in settings],
                out, dry)
        nll = {float(st["lr"]): nll_of(task, scoring, method, st) for st in settings}
        if any(x is None for x in nll.values()):
            return None
        best = min(nll, key=nll.get)
        if best != max(nll):
            return f"{best:g}"
        rates.append(f"{3 * best:g}")


def baselines(task):
    """The task's splits' sizes, chance and majority-answer accuracies (mcq baselines)."""
    out = subprocess.run([str(BIN), "baselines", "--task", task], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def learned(task):
    """Whether AdamW's best validation accuracy over the task's runs clears the bar; says
    which."""
    accs = [row["accuracy"] for _, a, row in searched()
            if a["task"] == task and a["method"] == "adamw"]
    v = baselines(task)["validation"]
    bar = max(v["chance"], v["majority"]) + LEARNED_MARGIN
    ok = bool(accs) and max(accs) >= bar
    best_acc = f"{100 * max(accs):.1f}%" if accs else "none yet"
    print(f"{task}: {'learned' if ok else 'not learned'}: AdamW's best validation accuracy "
          f"{best_acc} against {100 * bar:.1f}% (chance {100 * v['chance']:.1f}%, "
          f"majority {100 * v['majority']:.1f}%, plus {100 * LEARNED_MARGIN:.0f} points)")
    return ok


def search(dry):
    for task in TASKS:
        search_task(task, dry)


def best():
    """Prints the lowest-NLL setting per task, scoring and method."""
    for (task, scoring, method), (name, _, row) in sorted(chosen().items()):
        print(f"{task:9} {scoring:10} {method:11} NLL {row['nll']:.4f} accuracy "
              f"{100 * row['accuracy']:.1f}%  {name}")


# The order of a task's test runs, three seeds of each method in turn.
TEST_ORDER = ["adamw", "ivon", "blob", "mc-dropout"]


def test_runs(task):
    """The task's test runs: each method's best setting under the task's scoring, three
    seeds each."""
    scoring = scoring_of(task)
    if scoring is None or not learned(task):
        return []
    runs = []
    picks = {m: a for (t, s, m), (_, a, _) in chosen().items() if (t, s) == (task, scoring)}
    # The product's posterior first, so that a session's end cuts the least-needed rows.
    for method in sorted(picks, key=TEST_ORDER.index):
        a = picks[method]
        setting = {k: str(a[k.replace("-", "_")]) for k in SETTING_KEYS[method]}
        runs += [args_of(task, scoring, method, setting, seed, "test") for seed in range(3)]
    return runs


def test(dry):
    best()
    for task in TASKS:
        run_all(test_runs(task), ROOT / "runs" / "mcq" / "test", dry)


def extra_runs():
    """Beside the core table, on PIQA only: LoRA-Ensemble of 4 members at AdamW's chosen
    setting (its members train as AdamW does), three seeds on the test split."""
    scoring = scoring_of("piqa")
    adamw = chosen().get(("piqa", scoring, "adamw"))
    if adamw is None:
        return []
    lr = adamw[1]["lr"]
    return [{**args_of("piqa", scoring, "lora-ensemble", {"lr": str(lr)}, seed, "test"),
             "members": "4"} for seed in range(3)]


def run_everything(dry):
    for task in TASKS:
        search_task(task, dry)
        run_all(test_runs(task), ROOT / "runs" / "mcq" / "test", dry)
    run_all(extra_runs(), ROOT / "runs" / "mcq" / "test", dry)


def reference(task):
    """tools/reference/mcq_adamw.py on `task`'s test split with AdamW's chosen setting and
    the task's scoring, seed 0: its accuracy, NLL and ECE go beside ours."""
    scoring = scoring_of(task)
    lr = chosen()[(task, scoring, "adamw")][1]["lr"]
    out = ROOT / "runs" / "mcq" / "reference" / f"{task}-{scoring}-adamw-lr{lr}-s0.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(ROOT / ".venv-ref" / "bin" / "python"), str(ROOT / "tools/reference/mcq_adamw.py"),
           "--task", task, "--seed", "0", "--lr", str(lr), "--eval", "test"]
    if scoring == "cloze-mean":
        cmd.append("--mean")
    print(" ".join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    out.write_text(result.stdout.strip().splitlines()[-1] + "\n")
    print(out.read_text())


def main():
    what, dry = sys.argv[1] if len(sys.argv) > 1 else "", "--dry" in sys.argv
    if what == "all":
        run_everything(dry)
    elif what == "search":
        search(dry)
    elif what == "best":
        best()
    elif what == "test":
        test(dry)
    elif what == "reference" and len(sys.argv) > 2:
        reference(sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
