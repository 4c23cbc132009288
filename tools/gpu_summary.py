"""The GPU check's summary table (scripts/gpu-run.sh): the bit-for-bit tests, then the
optimizer_step_cuda bench from criterion's estimates, each against a device-to-device copy
of the same parameters.

    python3 tools/gpu_summary.py CRITERION_HOME TEST_LOG [PEER_LOG] > summary.md

PEER_LOG is tools/gpu_torch_peer.py's output, whose table is appended.
"""

import json
import os
import re
import sys

# Bytes each step moves per parameter (benches/optimizer_step.rs explains the counts).
# candle-nn's AdamW and IVON's tensor-op path run many kernels; they are counted at the
# fused minimum so that their figure reads as a fraction of the same floor.
BYTES = {"dtod_copy": 8, "ivon_fused": 44, "ivon_tensor_ops": 44, "adamw": 28}
ORDER = ["dtod_copy", "ivon_fused", "ivon_tensor_ops", "adamw"]


def tests(log):
    """(suite, test, result) for every test line of the libtest log."""
    rows, suite = [], "?"
    for line in open(log, errors="replace"):
        m = re.match(r"== (\S+)", line)
        if m:
            suite = os.path.basename(m.group(1))
        m = re.match(r"test (\S+) \.\.\. (\w+)", line)
        if m:
            rows.append((suite, m.group(1), m.group(2)))
    return rows


def median_ns(home, name, n):
    path = os.path.join(home, "optimizer_step_cuda", name, str(n), "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def bench(home):
    sizes = sorted(
        int(d)
        for d in os.listdir(os.path.join(home, "optimizer_step_cuda", "dtod_copy"))
        if d.isdigit()
    )
    print("| parameters | step | median | ns / parameter | GB/s | time / copy |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        copy = median_ns(home, "dtod_copy", n)
        for name in ORDER:
            t = median_ns(home, name, n)
            if t is None:
                print(f"| {n:.0e} | {name} | missing | | | |")
                continue
            ratio = f"{t / copy:.2f}" if copy else ""
            gbs = BYTES[name] * n / t
            print(
                f"| {n:.0e} | {name} | {t / 1e3:.1f} us | {t / n:.4f} | {gbs:.0f} | {ratio} |"
            )


def main():
    home, log = sys.argv[1], sys.argv[2]
    print("## Tests (GPU bits against CPU bits in ivon_cuda)\n")
    rows = tests(log) if os.path.exists(log) else []
    print("| suite | test | result |")
    print("|---|---|---|")
    for suite, name, result in rows:
        print(f"| {suite} | {name} | {result} |")
    if not rows:
        print("| | no test ran | |")
    print("\n## optimizer_step_cuda (criterion medians, one step and a synchronisation)\n")
    try:
        bench(home)
    except OSError as e:
        print(f"no bench results: {e}")
    if len(sys.argv) > 3 and os.path.exists(sys.argv[3]):
        print("\n## torch on the same GPU (tools/gpu_torch_peer.py)\n")
        for line in open(sys.argv[3], errors="replace"):
            if line.startswith(("|", "torch ")):
                print(line.rstrip())


if __name__ == "__main__":
    main()
