"""The peers of the optimizer_step_cuda bench, timed on the same GPU in the same run
(scripts/gpu-run.sh): torch's device-to-device copy, fused and foreach AdamW, and the
official IVON (ivon-opt, when importable) with one sample per step.

    python3 tools/gpu_torch_peer.py 100000 1000000 10000000 100000000

Each figure is the median over 50 steps, timed with CUDA events after 10 warm-up steps,
on f32 parameters drawn from N(0, 0.1^2) with gradients from N(0, 0.01^2).
tools/cpu_speed_table.py times the same steps on the CPU.
"""

import statistics
import sys
import time

import torch


def median_us(step, reps=50, warmup=10, device="cuda"):
    for _ in range(warmup):
        step()
    if device == "cpu":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e6)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def params(n, device="cuda"):
    p = torch.nn.Parameter(torch.randn(n, device=device) * 0.1)
    g = torch.randn(n, device=device) * 0.01
    return p, g


def copy(n, device="cuda"):
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    return lambda: dst.copy_(src)


def adamw(n, device="cuda", **kw):
    p, g = params(n, device)
    p.grad = g
    opt = torch.optim.AdamW([p], lr=1e-3, **kw)
    return opt.step


def ivon_opt(n, device="cuda"):
    import ivon

    p, g = params(n, device)
    opt = ivon.IVON([p], lr=0.1, ess=1e4, hess_init=0.5)

    def step():
        with opt.sampled_params(train=True):
            p.grad = g
        opt.step()

    return step


def main():
    sizes = [int(float(a)) for a in sys.argv[1:]] or [10**5, 10**6, 10**7, 10**8]
    steps = {
        "torch_copy": (copy, 8),
        "torch_adamw_fused": (lambda n: adamw(n, fused=True), 28),
        "torch_adamw_foreach": (lambda n: adamw(n, foreach=True), 28),
        "ivon_opt": (ivon_opt, 44),
    }
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| parameters | step | median | ns / parameter | GB/s |")
    print("|---|---|---|---|---|")
    for n in sizes:
        for name, (make, nbytes) in steps.items():
            try:
                us = median_us(make(n))
            except Exception as e:  # a missing ivon-opt must not hide the rest
                print(f"| {n:.0e} | {name} | {type(e).__name__}: {e} | | |")
                continue
            print(f"| {n:.0e} | {name} | {us:.1f} us | {us * 1e3 / n:.4f} | {nbytes * n / us / 1e3:.0f} |")
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
