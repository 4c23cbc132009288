"""Record IVON reference trajectories from the official implementation.

Runs `ivon-opt` 0.1.3 (torch 2.11.0, CPU) on a small MLP over the digits data and
writes, per configuration, one safetensors file under `tests/fixtures/ivon/` with:

- `init.group{g}`: the flattened initial parameters of group g,
- `step{t}.sample{k}.group{g}.z`: the standard-normal draw torch.randn returned,
- `step{t}.sample{k}.group{g}.noise`: the scaled noise z / sqrt(ess (h + wd)) the
  optimizer added to the mean,
- `step{t}.sample{k}.group{g}.theta`: the sampled weights, m + noise,
- `step{t}.sample{k}.group{g}.grad`: the gradient at that sample,
- `step{t}.group{g}.avg_grad`: the Welford mean of the gradients before the update,
- `step{t}.group{g}.{m,h,g}`: mean, Hessian estimate and momentum after the update,

and the configuration as JSON in the safetensors metadata (`config`).

Usage (from the repository root):
    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.11.0 ivon-opt==0.1.3 safetensors numpy
    .venv-ref/bin/python tools/reference/record_ivon.py
"""

import gzip
import json
import math
import os

import numpy as np
import torch
from safetensors.torch import save_file

import ivon

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "ivon")

# Each configuration covers a different corner; together they cover 2 parameter
# groups, mc_samples 1 and 3, weight_decay 0 and > 0, finite and infinite clip_radius,
# price and gradsq, debias and rescale_lr on and off.
CONFIGS = {
    "price_mc1_debias_rescale": dict(
        steps=60,
        globals=dict(mc_samples=1, hess_approx="price", debias=True, rescale_lr=True),
        groups=[
            dict(lr=0.1, ess=1000.0, hess_init=0.5, weight_decay=1e-4),
            dict(lr=0.05, ess=1000.0, hess_init=0.5, weight_decay=0.0, beta1=0.8),
        ],
    ),
    "price_mc3_clip_nodebias": dict(
        steps=50,
        globals=dict(mc_samples=3, hess_approx="price", debias=False, rescale_lr=False),
        groups=[
            dict(lr=0.05, ess=2000.0, hess_init=0.2, weight_decay=2e-4, clip_radius=1e-3),
            dict(lr=0.02, ess=500.0, hess_init=1.0, weight_decay=1e-3, beta2=0.999),
        ],
    ),
    "gradsq_mc3_clip_wd0": dict(
        steps=50,
        globals=dict(mc_samples=3, hess_approx="gradsq", debias=True, rescale_lr=False),
        groups=[
            dict(lr=0.02, ess=1500.0, hess_init=0.3, weight_decay=0.0, clip_radius=0.05),
        ],
    ),
    "gradsq_mc1_rescale_nodebias": dict(
        steps=60,
        globals=dict(mc_samples=1, hess_approx="gradsq", debias=False, rescale_lr=True),
        groups=[
            dict(lr=0.2, ess=1000.0, hess_init=0.1, weight_decay=5e-4, beta2=0.9999),
            dict(lr=0.1, ess=800.0, hess_init=0.05, weight_decay=1e-4, beta1=0.5),
        ],
    ),
}


def load_digits():
    with gzip.open(os.path.join(ROOT, "data", "digits.csv.gz"), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return torch.from_numpy(rows[:, :64] / 16.0), torch.from_numpy(rows[:, 64]).long()


def flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def record(name, spec, x, y):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10)
    )
    weights = [model[0].weight, model[2].weight]
    biases = [model[0].bias, model[2].bias]
    if len(spec["groups"]) == 2:
        groups = [weights, biases]
    else:
        groups = [weights + biases]
    param_groups = [dict(params=ps, **g) for ps, g in zip(groups, spec["groups"])]
    # Group 0's values are the optimizer defaults; group 1 overrides them.
    opt = ivon.IVON(param_groups, **spec["groups"][0], **spec["globals"])

    out = {}
    for gi, ps in enumerate(groups):
        out[f"init.group{gi}"] = flat(ps)

    draws = []
    real_randn = torch.randn

    def recording_randn(*args, **kwargs):
        z = real_randn(*args, **kwargs)
        draws.append(z.clone())
        return z

    noises = []
    real_sample_params = opt._sample_params

    def recording_sample_params():
        param_avg, noise = real_sample_params()
        noises.append(noise.clone())
        return param_avg, noise

    opt._sample_params = recording_sample_params
    sizes = [sum(p.numel() for p in ps) for ps in groups]
    torch.randn = recording_randn
    rng = np.random.default_rng(0)
    try:
        for t in range(spec["steps"]):
            idx = torch.from_numpy(rng.choice(len(x), size=32, replace=False))
            xb, yb = x[idx], y[idx]
            for k in range(opt.mc_samples):
                draws.clear()
                noises.clear()
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(xb), yb)
                    loss.backward()
                    assert len(draws) == len(groups) and len(noises) == 1
                    group_noise = noises[0].split(sizes)
                    for gi, ps in enumerate(groups):
                        key = f"step{t}.sample{k}.group{gi}"
                        out[f"{key}.z"] = draws[gi].clone()
                        out[f"{key}.noise"] = group_noise[gi].clone()
                        out[f"{key}.theta"] = flat(ps)
                        out[f"{key}.grad"] = torch.cat(
                            [p.grad.reshape(-1) for p in ps]
                        ).clone()
            offset = 0
            for gi, ps in enumerate(groups):
                n = sum(p.numel() for p in ps)
                out[f"step{t}.group{gi}.avg_grad"] = (
                    opt.state["avg_grad"][offset : offset + n].clone()
                )
                offset += n
            opt.step()
            for gi, (ps, pg) in enumerate(zip(groups, opt.param_groups)):
                out[f"step{t}.group{gi}.m"] = flat(ps)
                out[f"step{t}.group{gi}.h"] = pg["hess"].clone()
                out[f"step{t}.group{gi}.g"] = pg["momentum"].clone()
    finally:
        torch.randn = real_randn

    defaults = dict(
        hess_init=1.0, beta1=0.9, beta2=0.99999, weight_decay=1e-4,
        clip_radius=math.inf,
    )
    config = dict(
        steps=spec["steps"],
        **spec["globals"],
        groups=[
            {
                **defaults,
                **spec["groups"][0],
                **g,
                "shapes": [list(p.shape) for p in ps],
            }
            for g, ps in zip(spec["groups"], groups)
        ],
    )
    for g in config["groups"]:
        if math.isinf(g["clip_radius"]):
            g["clip_radius"] = None
    meta = {
        "config": json.dumps(config),
        "torch": torch.__version__,
        "ivon_opt": "0.1.3",
    }
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata=meta)
    print(f"{path}: {spec['steps']} steps, {os.path.getsize(path)} bytes")


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    x, y = load_digits()
    for name, spec in CONFIGS.items():
        record(name, spec, x, y)


if __name__ == "__main__":
    main()
