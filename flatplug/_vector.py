"""Dot products and norms of long parameter-sized vectors, accumulated in float64.

Lanczos and Hutchinson read a few scalars per Hessian-vector product (``q.Hq``, ``||w||``,
``v.Hv``) from vectors as long as the model has parameters. float32 accumulation is not good
enough there: on a CPU, ``torch.dot`` and ``norm`` of two 36.5M-entry float32 vectors
(WideResNet-28-10) are off by 3e-6 and 2.5e-3 relative. Converting the whole vectors with
``.double()`` is exact but, on a CPU, costs two fresh 292 MB tensors per scalar (0.2 s a dot
against a 1.2 s product at batch 4, most of it the first touch of fresh pages). On a CPU these
functions convert blocks of ``BLOCK`` entries (512 KB in float64, memory the allocator reuses):
the same float64 accuracy (a different summation order: about 1e-15 relative) at about a
seventh of the time. On other devices the whole-vector conversion is cheap and is kept.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["BLOCK", "dot64", "norm64", "project64"]

#: entries converted to float64 at a time on a CPU
BLOCK = 1 << 16


def dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a . b`` of two 1-D tensors (same length, dtype and device), accumulated in float64."""
    if a.dtype == torch.float64 and b.dtype == torch.float64:
        return float(torch.dot(a, b))
    n = a.numel()
    if a.device.type != "cpu" or n <= BLOCK:
        return float(torch.dot(a.double(), b.double()))
    total = 0.0
    for i in range(0, n, BLOCK):
        total += float(torch.dot(a[i : i + BLOCK].double(), b[i : i + BLOCK].double()))
    return total


def norm64(a: torch.Tensor) -> float:
    """The Euclidean norm of a 1-D tensor, accumulated in float64 (float32 and narrower
    values square without overflow or underflow in float64)."""
    if a.dtype == torch.float64:
        return float(a.norm())
    return math.sqrt(dot64(a, a))


#: float64 entries of the rows converted at a time by :func:`project64` (4 MB on a CPU, where
#: larger temporaries are mapped and faulted in afresh each time; 128 MB on other devices)
PROJECT_ENTRIES = {"cpu": 1 << 19}
_PROJECT_OTHER = 1 << 24


def project64(rows: torch.Tensor | Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``rows @ w`` for a matrix ``[m, n]`` (or several stacked in a list) and ``w [n]``, accumulated
    in float64; returns float64 ``[m]`` (all the matrices' rows in order) on ``w``'s device.

    The coefficients of a Gram-Schmidt projection. A float32 matrix-vector product over a whole
    parameter vector sums millions of terms in float32: on a CPU it was off by up to 4.7e-3 of
    ``||w||`` for a Hessian product of WideResNet-28-10 (``notes/wrn_orthogonality.py``), which cost
    the Lanczos basis its orthogonality (4.7e-4 there; 1.6e-2 and 0.3% of the top eigenvalue on a
    diagonal operator of that size, ``notes/reorthogonalisation.py``). Columns are converted to float64 in
    blocks whose temporary holds a fixed number of entries.
    """
    mats = [rows] if isinstance(rows, torch.Tensor) else list(rows)
    n = w.numel()
    if all(r.dtype == torch.float64 for r in mats) and w.dtype == torch.float64:
        return torch.cat([r @ w for r in mats])
    widest = max(r.shape[0] for r in mats)
    block = max(1024, PROJECT_ENTRIES.get(w.device.type, _PROJECT_OTHER) // max(widest, 1))
    outs = [torch.zeros(r.shape[0], dtype=torch.float64, device=w.device) for r in mats]
    for i in range(0, n, block):
        wb = w[i : i + block].double()
        for r, out in zip(mats, outs):
            out.addmv_(r[:, i : i + block].double(), wb)
    return torch.cat(outs)
