"""How orthonormal Lanczos's basis stays on a large float32 model: RobustBench's WideResNet-28-10
(36.5M parameters, random weights), 4 real CIFAR-10 images, 16 steps at tol 1e-4 (2 threads).
Records every vector the Hessian is applied to (the basis) and prints the top eigenvalue, its
residual, ``max |Q^T Q - I|`` (float64-accumulated) and how far a float32 ``Q w`` (one
matrix-vector product over the whole vector, what Lanczos used before) is from the float64 one,
relative to ``||w||``, for ``w`` the product of the last basis vector. Compare two checkouts:

    PYTHONPATH=/path/to/other/checkout .venv/bin/python notes/wrn_orthogonality.py
    .venv/bin/python notes/wrn_orthogonality.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import wide_resnet_on_cifar  # noqa: E402

from flatplug._vector import dot64  # noqa: E402  (present in both checkouts compared in notes/perf.md)
from flatplug.hvp import HessianOperator  # noqa: E402
from flatplug.lanczos import lanczos  # noqa: E402


def main() -> None:
    model, batch = wide_resnet_on_cifar(4, threads=2)
    op = HessianOperator(model, [batch])
    seen: list[torch.Tensor] = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.clone())
        return op.matvec(v)

    start = time.perf_counter()
    r = lanczos(matvec, op.dim, k=1, tol=1e-4, max_iter=16, dtype=op.dtype, generator=torch.Generator().manual_seed(0))
    print(f"steps {r.iterations}, top eigenvalue {r.eigenvalues[0].item():.4f}, residual {r.residuals[0].item():.4f}, "
          f"{time.perf_counter() - start:.1f} s")
    m = len(seen)
    gram = torch.tensor([[dot64(seen[i], seen[j]) for j in range(m)] for i in range(m)], dtype=torch.float64)
    print(f"max |Q^T Q - I| = {(gram - torch.eye(m, dtype=torch.float64)).abs().max().item():.1e}")
    w = op.matvec(seen[-1])
    q = torch.stack(seen)
    exact = torch.tensor([dot64(row, w) for row in q], dtype=torch.float64)
    off = ((q @ w).double() - exact).abs().max().item() / dot64(w, w) ** 0.5
    print(f"float32 Q w against float64: largest difference {off:.1e} of ||w||")


if __name__ == "__main__":
    main()
