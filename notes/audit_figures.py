"""The before/after figures of the eighth session's audit fixes (CHANGELOG, "Fixed"), from real data.

Run once on this checkout and once with PYTHONPATH on a worktree of 43197c0 (the code before):

    .venv/bin/python notes/audit_figures.py
    PYTHONPATH=/path/to/worktree .venv/bin/python notes/audit_figures.py

Prints, each against an independent reference:
1. relative flatness per sample of the float32 ``eran_mnist_6x100_nat`` on 1,000 MNIST images: how
   many values are 0 or more than 1% off a float64 computation without cancellation, and the medians;
2. ``feature_robustness`` of the float32 ``eran_mnist_conv_small_nat`` at delta 1e-4 against the
   same network in float64 (300 images, 200 Haar samples);
3. ``hessian_density``'s negative mass on ``trades_smallcnn`` (256 MNIST images, defaults), beside
   the weight of the nodes below ``-sigma``;
4. how often a 95% interval of the partial Spearman correlation excludes zero in 400 simulated zoos
   of 6, 8 and 16 models without any partial correlation: the percentile bootstrap over models (what the
   leaderboard used, 1,000 resamples) and the interval this checkout's leaderboard uses;
5. whether a class-weighted ``CrossEntropyLoss`` gets the plain loss's store key.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

from flatplug.features import features_and_logits, find_layer  # noqa: E402
from flatplug.leaderboard.stats import partial_correlations, partial_spearman  # noqa: E402
from flatplug.measures import feature_robustness, hessian_density, relative_flatness  # noqa: E402
from flatplug.sources import ZooSource, load_mnist  # noqa: E402
from flatplug.store import canonical_params  # noqa: E402


def zoo_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    return ZooSource(SHARED / "models" / "zoo.json").load(name).module.to(dtype).eval()


def relative_flatness_float32() -> None:
    data = load_mnist(SHARED / "data" / "mnist", n=1000)
    m64 = zoo_model("eran_mnist_6x100_nat", torch.float64)
    _, linear = find_layer(m64, None)
    phi, logits, _ = features_and_logits(m64, (data.x.double(), data.y), linear, quiet=True)
    w, p = linear.weight.detach(), torch.softmax(logits, 1)
    ref = phi.pow(2).sum(1) * (p * (w[None] - (p @ w)[:, None]).pow(2).sum(-1)).sum(1)
    got = relative_flatness(zoo_model("eran_mnist_6x100_nat", torch.float32), (data.x, data.y),
                            quiet=True).per_sample.double()
    off = int(((got - ref).abs() > 0.01 * ref).sum())
    print(f"1. relative flatness, float32 eran_mnist_6x100_nat, 1,000 images: {off} values 0 or >1% off; "
          f"median {float(got.median()):.3g} (float64 reference {float(ref.median()):.3g})")


def feature_robustness_float32() -> None:
    data = load_mnist(SHARED / "data" / "mnist", n=300)
    values = {}
    for dtype in (torch.float32, torch.float64):
        m = zoo_model("eran_mnist_conv_small_nat", dtype)
        r = feature_robustness(m, (data.x.to(dtype), data.y), delta=1.0, samples=200, grid=[1e-4], quiet=True)
        values[dtype] = r.details["curve"][0]
    a, b = values[torch.float32], values[torch.float64]
    print(f"2. feature_robustness at delta 1e-4: float32 {a['random']:.4g} +- {a['random_std_error']:.2g}, "
          f"float64 {b['random']:.4g} ({a['random'] / b['random']:.2f}x); prediction {b['predicted']:.4g}")


def density_negative_mass() -> None:
    data = load_mnist(SHARED / "data" / "mnist", n=256)
    d = hessian_density(zoo_model("trades_smallcnn", torch.float32), (data.x, data.y), quiet=True).details
    t, w = torch.tensor(d["nodes"][0]), torch.tensor(d["weights"][0])
    print(f"3. hessian_density on trades_smallcnn: negative_mass {d['negative_mass']:.3f}; weight below -sigma "
          f"{float(w[t < -d['sigma']].sum()):.4f}, below 0 {float(w[t < 0].sum()):.3f}")


def partial_intervals(zoos: int = 400, resamples: int = 1000) -> None:
    for n in (6, 8, 16):
        _partial_intervals(zoos, n, resamples)


def _partial_intervals(zoos: int, n: int, resamples: int) -> None:
    rng = np.random.default_rng(7)
    boot = current = 0
    for _ in range(zoos):
        clean = rng.normal(size=n)
        x, y = rng.normal(size=n), clean + 0.5 * rng.normal(size=n)
        idx = rng.integers(0, n, size=(resamples, n))
        rhos = partial_spearman(x[idx], y[idx], clean[idx])
        rhos = rhos[np.isfinite(rhos)]  # resamples without an estimate are dropped, as the leaderboard did
        if rhos.size:
            lo, hi = np.percentile(rhos, [2.5, 97.5])
            boot += not (lo <= 0 <= hi)
        ci = partial_correlations(pd.DataFrame({"x": x, "y": y, "z": clean}), "x", "y", "z").spearman_ci
        current += not (ci[0] <= 0 <= ci[1])
    print(f"4. null zoos of {n} models excluding zero: percentile bootstrap {boot / zoos:.1%}, "
          f"this checkout's partial interval {current / zoos:.1%}")


def loss_keys() -> None:
    plain = canonical_params({"loss_fn": torch.nn.CrossEntropyLoss(reduction="none")})
    weighted = canonical_params({"loss_fn": torch.nn.CrossEntropyLoss(reduction="none",
                                                                      weight=torch.linspace(0.2, 3.0, 10))})
    print(f"5. class-weighted CrossEntropyLoss shares the plain loss's store key: {plain == weighted}")


def main() -> None:
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: the real data and models live in ../shared beside the checkout")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    for step in (relative_flatness_float32, feature_robustness_float32, density_negative_mass, partial_intervals,
                 loss_keys):
        step()


if __name__ == "__main__":
    main()
