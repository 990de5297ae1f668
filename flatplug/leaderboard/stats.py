"""Partial rank correlations: does a measure track robustness beyond what clean accuracy explains?

For variables x (a measure), y (AutoAttack accuracy) and z (clean accuracy):

* partial Spearman: the first-order partial correlation of the ranks,
  ``rho_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` with ``r`` Spearman's rho
  (average ranks for ties). It equals the Pearson correlation of the residuals of rank(x) and
  rank(y) after a least-squares fit on rank(z) (Conover 1999, section 5.4).
* partial Kendall (Kendall 1942): the same formula with Kendall's tau-b in place of ``r``.

Both come with 95% bootstrap percentile intervals over models (paired resamples; a resample where
a variable is constant, or where x or y is perfectly rank-correlated with z, gives no estimate and
is dropped), like the plain correlations of :func:`flatplug.report.correlations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..report import correlations  # noqa: F401  (the plain rank correlations, used beside the partial ones)

MIN_N = 4


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks 1..n along the last axis (ties share the mean of their positions)."""
    below = (a[..., None, :] < a[..., :, None]).sum(-1)
    same = (a[..., None, :] == a[..., :, None]).sum(-1)
    return below + (same + 1) / 2.0


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ca = a - a.mean(-1, keepdims=True)
    cb = b - b.mean(-1, keepdims=True)
    den = np.sqrt((ca * ca).sum(-1) * (cb * cb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ca * cb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _pearson(_ranks(a), _ranks(b))


def kendall_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b along the last axis (each pair counted twice, which cancels)."""
    sa = np.sign(a[..., None, :] - a[..., :, None])
    sb = np.sign(b[..., None, :] - b[..., :, None])
    den = np.sqrt(np.abs(sa).sum((-2, -1)) * np.abs(sb).sum((-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sa * sb).sum((-2, -1)) / np.where(den > 0, den, 1.0), np.nan)


def partial(r_xy: np.ndarray, r_xz: np.ndarray, r_yz: np.ndarray) -> np.ndarray:
    """First-order partial correlation from the three pairwise correlations (NaN where undefined)."""
    den = np.sqrt((1 - r_xz ** 2) * (1 - r_yz ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-12, (r_xy - r_xz * r_yz) / np.where(den > 1e-12, den, 1.0), np.nan)
    return np.clip(out, -1.0, 1.0)


def partial_spearman(x, y, z) -> np.ndarray:
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    return partial(spearman(x, y), spearman(x, z), spearman(y, z))


def partial_kendall(x, y, z) -> np.ndarray:
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    return partial(kendall_b(x, y), kendall_b(x, z), kendall_b(y, z))


@dataclass(frozen=True)
class PartialCorrelation:
    """Partial Spearman and Kendall of ``x`` and ``y`` given ``z`` over ``n`` models, with 95% intervals."""

    x: str
    y: str
    z: str
    n: int
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_ci: tuple[float, float]
    n_boot_valid: int
    reason: str | None = None


def partial_correlations(table, x: str, y: str, z: str, *, n_boot: int = 1000, seed: int = 0) -> PartialCorrelation:
    """Partial rank correlations of ``table[x]`` and ``table[y]`` controlling for ``table[z]``, over its rows."""
    cols = [np.asarray(table[c], dtype=float) for c in (x, y, z)]
    keep = np.all([np.isfinite(c) for c in cols], axis=0)
    xs, ys, zs = (c[keep] for c in cols)
    n = int(keep.sum())
    nan2 = (math.nan, math.nan)
    if n < MIN_N:
        return PartialCorrelation(x, y, z, n, math.nan, nan2, math.nan, nan2, 0,
                                  f"only {n} models with {x}, {y} and {z}; a partial correlation needs {MIN_N}")
    for name, v in ((x, xs), (y, ys), (z, zs)):
        if np.all(v == v[0]):
            return PartialCorrelation(x, y, z, n, math.nan, nan2, math.nan, nan2, 0,
                                      f"{name} is the same for all {n} models")
    rho = float(partial_spearman(xs, ys, zs))
    tau = float(partial_kendall(xs, ys, zs))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rhos = partial_spearman(xs[idx], ys[idx], zs[idx])
    taus = partial_kendall(xs[idx], ys[idx], zs[idx])
    ok = np.isfinite(rhos) & np.isfinite(taus)
    ci = lambda v: tuple(float(q) for q in np.percentile(v[ok], [2.5, 97.5])) if ok.any() else nan2  # noqa: E731
    reason = None if math.isfinite(rho) else f"{x} or {y} is perfectly rank-correlated with {z}"
    return PartialCorrelation(x, y, z, n, rho, ci(rhos), tau, ci(taus), int(ok.sum()), reason)
