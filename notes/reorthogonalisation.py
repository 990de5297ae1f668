"""Lanczos's own vector work, without a model: a diagonal float32 operator (whose product costs one
multiply) the size of WideResNet-28-10's parameters (36.5M) and of resnet4b's (124k), top 10
eigenvalues at tol 1e-3. Prints the time per call (median of 3), the steps, the largest error of
the 10 eigenvalues against the diagonal, and the basis's loss of orthogonality
``max |Q Q^T - I|`` (the basis vectors are the vectors the operator is applied to). Run it with
PYTHONPATH on two checkouts to compare:

    PYTHONPATH=/path/to/other/checkout .venv/bin/python notes/reorthogonalisation.py
    .venv/bin/python notes/reorthogonalisation.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

import flatplug
from flatplug.lanczos import lanczos


def spectrum(dim: int) -> torch.Tensor:
    """A Hessian-like spectrum: a few outliers above a bulk near zero (float32)."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(dim, generator=g) * 0.05
    d[:30] = torch.logspace(2, 0, 30)
    return d


def main() -> None:
    torch.set_num_threads(1)
    print(f"flatplug from {Path(flatplug.__file__).parent}; torch {torch.__version__}, 1 thread")
    for dim in (36_500_000, 124_000):
        d = spectrum(dim)
        top = torch.sort(d.double(), descending=True).values[:10]
        seen: list[torch.Tensor] = []

        def matvec(v: torch.Tensor) -> torch.Tensor:
            if dim < 1_000_000:
                seen.append(v.double())
            return d * v

        times = []
        for _ in range(3):
            seen.clear()
            t = time.perf_counter()
            r = lanczos(matvec, dim, k=10, tol=1e-3, max_iter=80, dtype=torch.float32,
                        generator=torch.Generator().manual_seed(1))
            times.append(time.perf_counter() - t)
        err = ((r.eigenvalues - top).abs() / top).max().item()
        line = (f"dim {dim}: {statistics.median(times):.3f} s a call (median of 3), {r.iterations} steps, "
                f"largest relative eigenvalue error {err:.2e}")
        if seen:
            q = torch.stack(seen)
            line += f", max |Q Q^T - I| {(q @ q.T - torch.eye(len(seen), dtype=torch.float64)).abs().max().item():.1e}"
        print(line)


if __name__ == "__main__":
    main()
