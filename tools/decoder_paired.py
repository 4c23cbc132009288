"""The decoder's LoRA training step and forward, ours against transformers + peft on the
same 2 cores, alternated: each round runs `speed/examples/decoder_step.rs` (built in
release) and `tools/reference/decoder_step.py` once each, STEPS measured steps apiece
after a warm-up, in an order that alternates from round to round. Prints each round's
medians, the median over rounds of torch's time over ours (above 1: ours faster), and
each side's peak memory, as Markdown. With `--cloze`, the cloze head's training step
instead (4 questions of 4 choices).

    bash scripts/fetch-assets.sh --llm
    cargo build --release --example decoder_step
    .venv-ref/bin/python tools/decoder_paired.py [ROUNDS] [STEPS] [--cloze]
"""

import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OURS = [str(ROOT / "target" / "release" / "examples" / "decoder_step")]
TORCH = [sys.executable, str(ROOT / "tools" / "reference" / "decoder_step.py")]


def run(cmd, steps, keys):
    out = subprocess.run(cmd + [str(steps)] + EXTRA, cwd=ROOT, capture_output=True, text=True,
                         check=True)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    got = {k: statistics.median(r[k] for r in rows) for k in keys}
    got["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
    return got


EXTRA = ["--cloze"] if "--cloze" in sys.argv else []


def main():
    args = [a for a in sys.argv[1:] if a != "--cloze"]
    rounds = int(args[0]) if args else 3
    steps = int(args[1]) if len(args) > 1 else 3
    if EXTRA:
        keys = ["cloze_step_s"]
        print(f"SmolLM2-135M, cloze: 4 questions of 4 choices (16 x 64 tokens), LoRA r=8 on q "
              f"and v, {steps} steps per run\n")
        print("| round | ours: cloze step | torch: cloze step | torch / ours |")
        print("|---|---:|---:|---:|")
    else:
        keys = ["step_s", "forward_s"]
        print(f"SmolLM2-135M, batch 8 x 96 tokens, LoRA r=8 on q and v, {steps} steps per run\n")
        print("| round | ours: step | torch: step | torch / ours | ours: forward | torch: forward "
              "| torch / ours |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    ratios, peaks = {k: [] for k in keys}, {"ours": 0, "torch": 0}
    for r in range(rounds):
        order = [("ours", OURS), ("torch", TORCH)]
        if r % 2:
            order.reverse()
        got = {name: run(cmd, steps, keys) for name, cmd in order}
        o, t = got["ours"], got["torch"]
        cells = []
        for k in keys:
            ratios[k].append(t[k] / o[k])
            cells.append(f"{o[k]:.2f} s | {t[k]:.2f} s | {ratios[k][-1]:.2f}")
        for name in peaks:
            peaks[name] = max(peaks[name], got[name]["peak_rss_mb"])
        print(f"| {r + 1} | " + " | ".join(cells) + " |")
    medians = ", ".join(f"{k.removesuffix('_s')} {statistics.median(v):.2f}"
                        for k, v in ratios.items())
    print(f"\nmedian torch / ours: {medians}; peak memory ours {peaks['ours']:.0f} MB, "
          f"torch {peaks['torch']:.0f} MB")


if __name__ == "__main__":
    main()
