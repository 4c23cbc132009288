"""One table from one run on one machine (issue 14): the optimizer_step bench's CPU
figures from criterion next to torch's copy, fused and foreach AdamW, and the official
IVON (ivon-opt), timed here with the same thread count.

    cargo bench --bench optimizer_step
    .venv-ref/bin/python tools/cpu_speed_table.py [--threads N] [--criterion target/criterion]
    .venv-ref/bin/python tools/cpu_speed_table.py --paired ROUNDS

With --paired, it instead alternates the two steps the headline ratio compares, the
fused IVON step (a short criterion run of the bench, one size at a time) and torch's
fused AdamW, ROUNDS times per size, and prints the median of the rounds' ratios with
their range: on a shared machine whose speed drifts over minutes, a ratio of two
measurements taken minutes apart can be off by half.

torch's steps are medians over 50 steps after 10 warm-up steps (tools/gpu_torch_peer.py,
on the CPU); ours are criterion's medians. Each row's bandwidth counts the bytes the step
must move per parameter (benches/optimizer_step.rs): a copy 8, AdamW 28, IVON 32 (the
fused kernel moves 44; the table uses the 32 any IVON step must move).
"""

import argparse
import json
import os
import statistics
import subprocess

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


def bench_fused_us(home, n, threads):
    """A short criterion run of the fused IVON step at `n` parameters on `threads` threads
    (torch's count); its median in us."""
    filt = f"^optimizer_step/ivon_fused/{n}$"
    cmd = ["cargo", "bench", "--quiet", "--bench", "optimizer_step", "--", "--noplot",
           "--warm-up-time", "1", "--measurement-time", "2", filt]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return criterion_us(home, "ivon_fused", n)


def paired(rounds, home, threads):
    """The fused IVON step against torch's fused AdamW, alternately, `rounds` times a size."""
    print(f"{rounds} alternating rounds per size: criterion median of the fused IVON step "
          "over torch's fused AdamW median, each round")
    print("| parameters | ratio, median of rounds | range | IVON fused, median | torch fused AdamW, median |")
    print("|---|---|---|---|---|")
    for n in SIZES:
        ratios, ours, theirs = [], [], []
        torch_step = peer.adamw(n, "cpu", fused=True)
        for _ in range(rounds):
            ours.append(bench_fused_us(home, n, threads))
            theirs.append(peer.median_us(torch_step, device="cpu"))
            ratios.append(ours[-1] / theirs[-1])
        med = statistics.median
        print(f"| {n:.0e} | {med(ratios):.2f} | {min(ratios):.2f} to {max(ratios):.2f} "
              f"| {med(ours) * 1e3 / n:.2f} ns / parameter | {med(theirs) * 1e3 / n:.2f} ns / parameter |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--criterion", default="target/criterion")
    p.add_argument("--paired", type=int, metavar="ROUNDS",
                   help="alternate the fused IVON step and torch's fused AdamW instead")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} cores")
    if a.paired is not None:
        if a.paired < 1:
            p.error("--paired needs at least 1 round")
        return paired(a.paired, a.criterion, a.threads)
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
