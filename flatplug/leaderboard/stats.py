"""Partial rank correlations: does a measure track robustness beyond what clean accuracy explains?

For variables x (a measure), y (AutoAttack accuracy) and z (clean accuracy):

* partial Spearman: the first-order partial correlation of the ranks,
  ``rho_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` with ``r`` Spearman's rho
  (average ranks for ties). It equals the Pearson correlation of the residuals of rank(x) and
  rank(y) after a least-squares fit on rank(z) (Conover 1999, section 5.4).
* partial Kendall (Kendall 1942): the same formula with Kendall's tau-b in place of ``r``.

Both come with 95% Fisher-z intervals, ``tanh(atanh(r) +- 1.96 sqrt(v / (n - k - c)))`` with
``k = 1`` controlled variable and the variances of Fieller, Hartley & Pearson (1957, "Tests for rank
correlation coefficients. I", Biometrika 44): ``v = 1.06, c = 3`` for Spearman, ``v = 0.437,
c = 4`` for Kendall (so at least 5 and 6 models). Not a bootstrap over models, as for the plain
correlations of :func:`flatplug.report.correlations`: with a zoo of 8 models a resample holds
about 5 distinct models, where a partial correlation is often exactly +-1 or undefined, and the
percentile interval excluded zero in 31% of 400 simulated zoos without any partial correlation
(x independent of y and z, y tracking z), this interval in 4% (Spearman); at 16 models 1% and 3%;
at 6 models 50% and 16%, so no interval is reliable there (``notes/audit_figures.py``;
``tests/test_leaderboard_stats.py`` checks the level at 8 models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..report import correlations  # noqa: F401  (the plain rank correlations, used beside the partial ones)

MIN_N = 4
#: Fieller, Hartley & Pearson (1957): the variance numerator and the degrees lost of Fisher's z
FISHER = {"spearman": (1.06, 3), "kendall": (0.437, 4)}
Z_975 = 1.959963984540054


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
    reason: str | None = None
    interval: str = "Fisher z (Fieller et al. 1957), 95%"


def fisher_interval(r: float, n: int, kind: str, controlled: int = 1) -> tuple[float, float]:
    """The 95% Fisher-z interval of a (partial) rank correlation ``r`` over ``n`` models (NaN when too few)."""
    v, c = FISHER[kind]
    df = n - controlled - c
    if df <= 0 or not math.isfinite(r):
        return (math.nan, math.nan)
    z = math.atanh(min(max(r, -1.0 + 1e-15), 1.0 - 1e-15))
    half = Z_975 * math.sqrt(v / df)
    return (math.tanh(z - half), math.tanh(z + half))


def partial_correlations(table, x: str, y: str, z: str) -> PartialCorrelation:
    """Partial rank correlations of ``table[x]`` and ``table[y]`` controlling for ``table[z]``, over its
    rows, with Fisher-z intervals (see the module docstring)."""
    cols = [np.asarray(table[c], dtype=float) for c in (x, y, z)]
    keep = np.all([np.isfinite(c) for c in cols], axis=0)
    xs, ys, zs = (c[keep] for c in cols)
    n = int(keep.sum())
    nan2 = (math.nan, math.nan)
    if n < MIN_N:
        return PartialCorrelation(x, y, z, n, math.nan, nan2, math.nan, nan2,
                                  f"only {n} models with {x}, {y} and {z}; a partial correlation needs {MIN_N}")
    for name, v in ((x, xs), (y, ys), (z, zs)):
        if np.all(v == v[0]):
            return PartialCorrelation(x, y, z, n, math.nan, nan2, math.nan, nan2,
                                      f"{name} is the same for all {n} models")
    rho = float(partial_spearman(xs, ys, zs))
    tau = float(partial_kendall(xs, ys, zs))
    reason = None if math.isfinite(rho) else f"{x} or {y} is perfectly rank-correlated with {z}"
    if reason is None and n - 1 - FISHER["kendall"][1] <= 0:
        reason = f"only {n} models: no interval for the partial Kendall correlation (it needs 6)"
    return PartialCorrelation(x, y, z, n, rho, fisher_interval(rho, n, "spearman"), tau,
                              fisher_interval(tau, n, "kendall"), reason)
