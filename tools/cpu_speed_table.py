"""One table from one run on one machine (issue 14): the optimizer_step bench's CPU
figures from criterion next to torch's copy, fused and foreach AdamW, and the official
IVON (ivon-opt), timed here with the same thread count.

    cargo bench --bench optimizer_step
    .venv-ref/bin/python tools/cpu_speed_table.py [--threads N] [--criterion target/criterion]

torch's steps are medians over 50 steps after 10 warm-up steps (tools/gpu_torch_peer.py,
on the CPU); ours are criterion's medians. Each row's bandwidth counts the bytes the step
must move per parameter (benches/optimizer_step.rs): a copy 8, AdamW 28, IVON 32 (the
fused kernel moves 44; the table uses the 32 any IVON step must move).
"""

import argparse
import json
import os

import torch

import gpu_torch_peer as peer

SIZES = [100_000, 1_000_000, 10_000_000]
# (row, bytes per parameter, how to time it)
OURS = [
    ("varlora memcpy, 1 thread", 8, "memcpy"),
    ("varlora memcpy, all cores", 8, "memcpy_all_cores"),
    ("varlora IVON, fused", 32, "ivon_fused"),
    ("varlora IVON, tensor ops", 32, "ivon_tensor_ops"),
    ("candle-nn AdamW", 28, "adamw"),
]
TORCH = [
    ("torch copy_", 8, peer.copy),
    ("torch AdamW, fused", 28, lambda n, d: peer.adamw(n, d, fused=True)),
    ("torch AdamW, foreach", 28, lambda n, d: peer.adamw(n, d, foreach=True)),
    ("ivon-opt (official IVON)", 32, peer.ivon_opt),
]


def criterion_us(home, name, n):
    path = os.path.join(home, "optimizer_step", name, str(n), "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"] / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--criterion", default="target/criterion")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} cores")
    print("| parameters | step | median | ns / parameter | GB/s | vs torch fused AdamW |")
    print("|---|---|---|---|---|---|")
    for n in SIZES:
        rows = []
        for name, nbytes, make in TORCH:
            try:
                rows.append((name, nbytes, peer.median_us(make(n, "cpu"), device="cpu")))
            except Exception as e:  # a missing ivon-opt must not hide the rest
                rows.append((f"{name}: {type(e).__name__}", nbytes, None))
        for name, nbytes, bench in OURS:
            try:
                rows.append((name, nbytes, criterion_us(a.criterion, bench, n)))
            except OSError:
                rows.append((f"{name}: no criterion result", nbytes, None))
        fused = dict((r[0], r[2]) for r in rows)["torch AdamW, fused"]
        for name, nbytes, us in rows:
            if us is None:
                print(f"| {n:.0e} | {name} | | | | |")
                continue
            ratio = f"{us / fused:.2f}" if fused else ""
            print(
                f"| {n:.0e} | {name} | {us:.1f} us | {us * 1e3 / n:.2f} "
                f"| {nbytes * n / us / 1e3:.1f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
