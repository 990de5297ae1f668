"""Rank correlations with bootstrap percentile intervals, in plain numpy (scipy is not a dependency).

Spearman's rho is the Pearson correlation of average ranks (ties share the mean of their
positions); Kendall's tau is tau-b, which corrects for ties in either variable:
``tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2))`` with ``n0`` the number of pairs and ``n1``,
``n2`` the pairs tied in x and in y. Both are computed on whole batches of resamples at once
(pairwise comparison matrices), so a 1000-resample bootstrap over a zoo of models is quick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_N = 3
_CHUNK_ELEMENTS = 4_000_000  # resamples * n * n per comparison batch: bounds the memory


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis; tied values share the mean of the positions they span."""
    a = np.asarray(a, dtype=float)
    below = (a[..., None, :] < a[..., :, None]).sum(-1)
    same = (a[..., None, :] == a[..., :, None]).sum(-1)  # counts the value itself
    return below + (same + 1) / 2.0


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis (NaN where a variable is constant)."""
    rx, ry = average_ranks(x), average_ranks(y)
    cx = rx - rx.mean(-1, keepdims=True)
    cy = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((cx * cx).sum(-1) * (cy * cy).sum(-1))
    num = (cx * cy).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(out, -1.0, 1.0)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b along the last axis (NaN where a variable is constant).

    Every pair is counted twice (i, j and j, i), which cancels in the ratio.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    sx = np.sign(x[..., None, :] - x[..., :, None])
    sy = np.sign(y[..., None, :] - y[..., :, None])
    num = (sx * sy).sum((-2, -1))
    den = np.sqrt(np.abs(sx).sum((-2, -1)) * np.abs(sy).sum((-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(out, -1.0, 1.0)


@dataclass(frozen=True)
class Correlation:
    """Rank correlations of two columns over models, with bootstrap 95% percentile intervals.

    ``n`` counts the models with a finite value in both columns; ``n_boot_valid`` the resamples
    on which both statistics are defined (a resample where a column is constant is dropped).
    ``reason`` says why the estimates are NaN (too few models, a constant column), else None.
    """

    x: str
    y: str
    n: int
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_ci: tuple[float, float]
    n_boot: int
    n_boot_valid: int
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spearman_lo"], d["spearman_hi"] = d.pop("spearman_ci")
        d["kendall_lo"], d["kendall_hi"] = d.pop("kendall_ci")
        return d


def _column(table: Any, col: str) -> np.ndarray:
    try:
        values = table[col]
    except (KeyError, IndexError, TypeError):
        cols = list(getattr(table, "columns", getattr(table, "keys", lambda: [])()))
        raise ValueError(f"correlations: no column {col!r} in the table; columns are {', '.join(map(repr, cols))}") from None
    try:
        return np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"correlations: column {col!r} is not numeric; pass a column of numbers (NaN for missing)") from None


def bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spearman and Kendall on ``n_boot`` paired resamples of (x, y) (NaN where undefined)."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n * n))
    rho = np.empty(n_boot)
    tau = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        part = idx[start:start + chunk]
        rho[start:start + chunk] = spearman_rho(x[part], y[part])
        tau[start:start + chunk] = kendall_tau_b(x[part], y[part])
    return rho, tau


def correlations(table: Any, x_col: str, y_col: str, n_boot: int = 1000, seed: int = 0) -> Correlation:
    """Spearman rho and Kendall tau-b of ``table[x_col]`` vs ``table[y_col]`` over its rows (models).

    Rows with a missing or non-finite value in either column are left out. The intervals are
    95% bootstrap percentile intervals from ``n_boot`` resamples of the rows (paired), drawn with
    ``numpy.random.default_rng(seed)``. Fewer than 3 models or a constant column give NaN
    estimates and a ``reason`` instead of an error.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot: expected a number of bootstrap resamples >= 0, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    x_all, y_all = _column(table, x_col), _column(table, y_col)
    keep = np.isfinite(x_all) & np.isfinite(y_all)
    x, y = x_all[keep], y_all[keep]
    n = int(x.shape[0])
    nan2 = (math.nan, math.nan)

    def undefined(reason: str) -> Correlation:
        return Correlation(x_col, y_col, n, math.nan, nan2, math.nan, nan2, int(n_boot), 0, reason)

    if n < MIN_N:
        return undefined(f"only {n} model{'s' if n != 1 else ''} with both {x_col} and {y_col}; "
                         f"rank correlations need at least {MIN_N}")
    for name, v in ((x_col, x), (y_col, y)):
        if np.all(v == v[0]):
            return undefined(f"{name} is the same ({v[0]:.6g}) for all {n} models, so it cannot be ranked")
    rho = float(spearman_rho(x, y))
    tau = float(kendall_tau_b(x, y))
    rho_ci = tau_ci = nan2
    valid = 0
    if n_boot > 0:
        rhos, taus = bootstrap(x, y, int(n_boot), int(seed))
        ok = np.isfinite(rhos) & np.isfinite(taus)
        valid = int(ok.sum())
        if valid:
            rho_ci = tuple(float(v) for v in np.percentile(rhos[ok], [2.5, 97.5]))  # type: ignore[assignment]
            tau_ci = tuple(float(v) for v in np.percentile(taus[ok], [2.5, 97.5]))  # type: ignore[assignment]
    return Correlation(x_col, y_col, n, rho, rho_ci, tau, tau_ci, int(n_boot), valid, None)
