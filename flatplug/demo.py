"""The embedded default job: two small CNNs trained on scikit-learn's digits, measured side by side.

One is trained normally, one with PGD adversarial training. The table shows clean and robust
accuracy next to weight-space measures (Hessian, sharpness) and input/feature-space ones
(local flatness, relative flatness), so a user sees both views rather than "flat = robust".
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import measures
from .attacks import pgd, robust_accuracy
from .sources.digits import load_digits
from .sources.subset import to_loader

EPS = 0.1


def digits_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def train_digits(adversarial: bool, *, epochs: int = 30, seed: int = 0) -> nn.Sequential:
    """Adam, batch 64; with ``adversarial`` each batch is replaced by PGD-5 examples at eps 0.1."""
    x, y = load_digits(split="train", seed=seed)
    model = digits_cnn(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        for xb, yb in to_loader(x, y, 64):
            if adversarial:
                model.eval()
                xb = pgd(model, xb, yb, eps=EPS, steps=5, seed=epoch)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def measure_model(model: nn.Module, data, quiet: bool) -> dict[str, float]:
    x, y = data
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    return {
        "clean_accuracy": clean,
        "robust_accuracy": robust_accuracy(model, data, eps=EPS, steps=20),
        "relative_flatness": measures.relative_flatness(model, data, quiet=quiet).value,
        "hessian_top_eigenvalue": measures.hessian_eigenvalues(model, data, k=1, quiet=quiet).value,
        "hessian_trace": measures.hessian_trace(model, data, probes=50, quiet=quiet).value,
        "avg_sharpness": measures.sharpness(model, data, rho=0.1, kind="average", samples=50, quiet=quiet).value,
        "local_flatness": measures.local_flatness(model, data, eps=EPS, steps=10, quiet=quiet).value,
    }


def run_demo(out: str | Path = "flatplug-demo", quiet: bool = False) -> dict[str, dict[str, float]]:
    """Train both models, measure them on the digits test split, print a table, write ``results.json``."""
    start = time.perf_counter()
    test = load_digits(split="test")
    data = (test.x, test.y)
    results = {}
    for label, adversarial in (("standard", False), ("pgd-at eps=0.1", True)):
        print(f"training {label} on scikit-learn digits ...", flush=True)
        results[label] = measure_model(train_digits(adversarial), data, quiet)
    names = list(next(iter(results.values())))
    print(f"\n{'measure (digits test, n=%d)' % len(test.y):<32}" + "".join(f"{k:>18}" for k in results))
    for name in names:
        print(f"{name:<32}" + "".join(f"{results[k][name]:>18.4g}" for k in results))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out / 'results.json'} ({time.perf_counter() - start:.0f} s)")
    return results
