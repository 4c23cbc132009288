"""The decoder's LoRA training step and forward, ours against transformers + peft on the
same 2 cores, alternated: each round runs `speed/examples/decoder_step.rs` (built in
release) and `tools/reference/decoder_step.py` once each, STEPS measured steps apiece
after a warm-up, in an order that alternates from round to round. Prints each round's
medians, the median over rounds of torch's time over ours (above 1: ours faster), and
each side's peak memory, as Markdown.

    bash scripts/fetch-assets.sh --llm
    cargo build --release --example decoder_step
    .venv-ref/bin/python tools/decoder_paired.py [ROUNDS] [STEPS]
"""

import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OURS = [str(ROOT / "target" / "release" / "examples" / "decoder_step")]
TORCH = [sys.executable, str(ROOT / "tools" / "reference" / "decoder_step.py")]


def run(cmd, steps):
    out = subprocess.run(cmd + [str(steps)], cwd=ROOT, capture_output=True, text=True, check=True)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    return {
        "step_s": statistics.median(r["step_s"] for r in rows),
        "forward_s": statistics.median(r["forward_s"] for r in rows),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
    }


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(f"SmolLM2-135M, batch 8 x 96 tokens, LoRA r=8 on q and v, {steps} steps per run\n")
    print("| round | ours: step | torch: step | torch / ours | ours: forward | torch: forward | torch / ours |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    step_ratios, fwd_ratios, peaks = [], [], {"ours": 0, "torch": 0}
    for r in range(rounds):
        order = [("ours", OURS), ("torch", TORCH)]
        if r % 2:
            order.reverse()
        got = {name: run(cmd, steps) for name, cmd in order}
        o, t = got["ours"], got["torch"]
        step_ratios.append(t["step_s"] / o["step_s"])
        fwd_ratios.append(t["forward_s"] / o["forward_s"])
        for name in peaks:
            peaks[name] = max(peaks[name], got[name]["peak_rss_mb"])
        print(f"| {r + 1} | {o['step_s']:.2f} s | {t['step_s']:.2f} s | {step_ratios[-1]:.2f} "
              f"| {o['forward_s']:.2f} s | {t['forward_s']:.2f} s | {fwd_ratios[-1]:.2f} |")
    print(f"\nmedian torch / ours: step {statistics.median(step_ratios):.2f}, "
          f"forward {statistics.median(fwd_ratios):.2f}; peak memory ours "
          f"{peaks['ours']:.0f} MB, torch {peaks['torch']:.0f} MB")


if __name__ == "__main__":
    main()
