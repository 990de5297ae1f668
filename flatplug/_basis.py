"""A growing orthonormal basis of long vectors (the Lanczos basis), stored in chunks of rows.

A Krylov basis of a large model's Hessian holds tens of parameter-sized vectors: on
WideResNet-28-10, 146 MB each. Growing one contiguous ``[rows, dim]`` tensor copies the whole
basis (at 16 rows a 2.3 GB copy into fresh pages: 7.8 s of a 33 s call on a CPU in a cProfile of
the 36.5M-entry call of ``notes/reorthogonalisation.py``), and on a GPU holds the old and the new
tensor at once. Here the basis grows by chunks that are never copied
(each as large as all the earlier ones together, so a basis of ``m`` rows has about ``log2 m``
chunks). Projections accumulate in float64 (:func:`flatplug._vector.project64`).
"""

from __future__ import annotations

import torch

from ._vector import project64

__all__ = ["Basis"]

#: rows in the first chunk
FIRST_ROWS = 16


class Basis:
    """Rows ``0 .. len - 1`` of an orthonormal basis of vectors of length ``dim`` (at most
    ``capacity`` rows) in ``dtype`` on ``device``."""

    def __init__(self, dim: int, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        self.dim, self.capacity, self.dtype, self.device = dim, capacity, dtype, device
        self._chunks: list[torch.Tensor] = []
        self._allocated = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def _locate(self, j: int) -> tuple[torch.Tensor, int]:
        start = 0
        for chunk in self._chunks:
            if j < start + chunk.shape[0]:
                return chunk, j - start
            start += chunk.shape[0]
        raise IndexError(j)

    def row(self, j: int) -> torch.Tensor:
        """Row ``j`` (a view)."""
        if not 0 <= j < self._len:
            raise IndexError(f"row {j} of a basis of {self._len}")
        chunk, i = self._locate(j)
        return chunk[i]

    def append(self, w: torch.Tensor, norm: float) -> torch.Tensor:
        """Store ``w / norm`` as the next row (divided straight into its place); returns the row."""
        if self._len == self._allocated:
            if self._allocated >= self.capacity:
                raise IndexError(f"the basis is full ({self.capacity} rows)")
            rows = min(self.capacity - self._allocated, max(FIRST_ROWS, self._allocated))
            self._chunks.append(torch.empty(rows, self.dim, dtype=self.dtype, device=self.device))
            self._allocated += rows
        chunk, i = self._locate(self._len)
        torch.div(w, norm, out=chunk[i])
        self._len += 1
        return chunk[i]

    def _leading(self, rows: int) -> list[torch.Tensor]:
        out, start = [], 0
        for chunk in self._chunks:
            if start >= rows:
                break
            out.append(chunk[: rows - start])
            start += chunk.shape[0]
        return out

    def orthogonalise(self, w: torch.Tensor, rows: int | None = None) -> None:
        """Subtract from ``w`` (in place) its projection on the first ``rows`` rows (all by default),
        one classical Gram-Schmidt pass with float64 coefficients."""
        parts = self._leading(self._len if rows is None else rows)
        if not parts:
            return
        coeff = project64(parts, w).to(self.dtype)
        start = 0
        for part in parts:
            w.addmv_(part.T, coeff[start : start + part.shape[0]], alpha=-1)
            start += part.shape[0]

    def combine(self, coeff: torch.Tensor) -> torch.Tensor:
        """``coeff.T @ Q`` for coefficients ``[rows, k]`` of the first ``rows`` rows: ``[k, dim]``."""
        coeff = coeff.to(device=self.device, dtype=self.dtype)
        out = None
        start = 0
        for part in self._leading(coeff.shape[0]):
            term = coeff[start : start + part.shape[0]].T @ part
            out = term if out is None else out.add_(term)
            start += part.shape[0]
        assert out is not None
        return out
