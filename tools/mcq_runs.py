"""The decoder benchmark's runs, one after another, resumable: each run is skipped when its
result JSON already exists, so a queue interrupted at the end of a session goes on where
it stopped in the next.

    python3 tools/mcq_runs.py search [--dry]     # validation runs, seed 0: the settings grid
    python3 tools/mcq_runs.py best               # per task, scoring and method: the setting
                                                 # of lowest validation NLL
    python3 tools/mcq_runs.py test [--dry]       # the chosen settings, seeds 0-2, test split
    python3 tools/mcq_runs.py reference TASK     # transformers + peft's AdamW there, seed 0

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
TASKS = ["piqa", "arc_easy"]
SCORINGS = ["cloze", "cloze-mean"]
# The references' starting points and a few around them (docs/mcq.md).
GRID = {
    "adamw": [{"lr": lr} for lr in ["1e-4", "3e-4", "1e-3"]],
    "ivon": [{"lr": "0.03", "ess": ess} for ess in ["1e6", "1e7", "1e8"]],
    "blob": [{"lr": "3e-4", "kl-lr": kl} for kl in ["0.01", "0.001"]],
    "mc-dropout": [{"lr": "3e-4"}],
}


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


def search(dry):
    runs = [args_of(t, s, m, setting, 0, "validation")
            for t, s in itertools.product(TASKS, SCORINGS)
            for m, settings in GRID.items() for setting in settings]
    run_all(runs, ROOT / "runs" / "mcq" / "search", dry)


def best():
    """The lowest-NLL setting per task, scoring and method, from the search's first row
    (the method's own predictive)."""
    chosen = {}
    for path in sorted((ROOT / "runs" / "mcq" / "search").glob("*.json")):
        d = json.loads(path.read_text())
        a, row = d["args"], d["rows"][0]
        key = (a["task"], a["scoring"], a["method"])
        if key not in chosen or row["nll"] < chosen[key][1]["nll"]:
            chosen[key] = (path.name, row)
    for (task, scoring, method), (name, row) in sorted(chosen.items()):
        print(f"{task:9} {scoring:10} {method:11} NLL {row['nll']:.4f} accuracy "
              f"{100 * row['accuracy']:.1f}%  {name}")
    return chosen


def test(dry):
    """Per task, the scoring of AdamW's lowest validation NLL; per method, its best
    setting under that scoring; three seeds each on the test split."""
    chosen = best()
    runs = []
    for task in TASKS:
        adamw = {s: row["nll"] for (t, s, m), (_, row) in chosen.items()
                 if t == task and m == "adamw"}
        if not adamw:
            continue
        scoring = min(adamw, key=adamw.get)
        print(f"{task}: {scoring} scoring (AdamW's validation NLL {adamw[scoring]:.4f})")
        for (t, s, method), (name, _) in chosen.items():
            if (t, s) != (task, scoring):
                continue
            a = json.loads((ROOT / "runs" / "mcq" / "search" / name).read_text())["args"]
            setting = {k: str(a[k.replace("-", "_")]) for k in ["lr", "ess", "kl-lr"]
                       if a.get(k.replace("-", "_")) is not None}
            runs += [args_of(task, scoring, method, setting, seed, "test") for seed in range(3)]
    run_all(runs, ROOT / "runs" / "mcq" / "test", dry)


def reference(task):
    """tools/reference/mcq_adamw.py on `task`'s test split with AdamW's chosen setting and
    the task's scoring, seed 0: its accuracy, NLL and ECE go beside ours."""
    chosen = best()
    adamw = {s: (name, row) for (t, s, m), (name, row) in chosen.items()
             if t == task and m == "adamw"}
    scoring = min(adamw, key=lambda s: adamw[s][1]["nll"])
    lr = json.loads((ROOT / "runs" / "mcq" / "search" / adamw[scoring][0]).read_text())["args"]["lr"]
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
    if what == "search":
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
