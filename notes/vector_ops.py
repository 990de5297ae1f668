"""Lanczos and Hutchinson's per-product vector work on a large model (WideResNet-28-10, 36.5M
parameters, random weights, 4 real CIFAR-10 images, CPU): time per call of the top eigenvalue
(k=1, tol 1e-2, max 20 steps) and of a 10-probe Hutchinson trace, and the share spent inside the
Hessian-vector products. Run it twice with PYTHONPATH pointing at two checkouts to compare:

    PYTHONPATH=/path/to/other/checkout .venv/bin/python notes/vector_ops.py
    .venv/bin/python notes/vector_ops.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import wide_resnet_on_cifar  # noqa: E402

import flatplug.measures as M  # noqa: E402
from flatplug import hvp as H  # noqa: E402


def main() -> None:
    model, batch = wide_resnet_on_cifar(4, threads=1)
    spent = [0.0]
    matvec = H.HessianOperator.matvec

    def timed_matvec(self, v):
        t = time.perf_counter()
        out = matvec(self, v)
        spent[0] += time.perf_counter() - t
        return out

    H.HessianOperator.matvec = timed_matvec
    calls = {
        "top eigenvalue": lambda: M.hessian_eigenvalues(model, batch, k=1, tol=1e-2, max_iter=20, quiet=True),
        "trace, 10 probes": lambda: M.hessian_trace(model, batch, probes=10, tol=0.0, min_probes=10, quiet=True),
    }
    for name, call in calls.items():
        whole, outside = [], []
        for _ in range(3):
            spent[0] = 0.0
            t = time.perf_counter()
            result = call()
            whole.append(time.perf_counter() - t)
            outside.append(whole[-1] - spent[0])
        print(f"{name}: {statistics.median(whole):.2f} s a call (median of 3), of which outside the products "
              f"{statistics.median(outside):.2f} s; value {result.value:.6g}, products {result.details['hvp_count']}")


if __name__ == "__main__":
    main()
