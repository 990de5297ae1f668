"""Plot an attack's trajectory: per-step loss, wrong-class confidence and relative flatness.

The curves of "The Uncanny Valley" (Walter et al.): along an attack's path the relative flatness
of the penultimate layer rises until the label flips, then falls as the example becomes
confidently wrong. Records come from the torchattacks adapter's ``TrajectoryRecorder`` (its
``.record``), or any mapping ``name -> [steps, samples]`` array. Uses matplotlib's object API
(``Figure``), so no GUI backend is involved.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

#: axis labels of the quantities a TrajectoryRecorder records
LABELS = {
    "loss": "loss",
    "confidence": "wrong-class confidence",
    "relative_flatness": "relative flatness",
}


def _as_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"record: {name!r} must be a non-empty [steps, samples] array, got shape {arr.shape}")
    return arr


def _curves(record: Any) -> tuple[dict[str, np.ndarray], np.ndarray | None, str | None]:
    """(name -> [steps, samples], flip step per sample or None, title) from a record or a mapping."""
    if hasattr(record, "values") and isinstance(getattr(record, "values"), Mapping):
        values = record.values
        flip = getattr(record, "flip_step", None)
        title = getattr(record, "attack", None)
    elif isinstance(record, Mapping):
        values, flip, title = {k: v for k, v in record.items() if k != "flip_step"}, record.get("flip_step"), None
    else:
        raise TypeError(
            f"record: expected a Trajectory (TrajectoryRecorder.record) or a mapping of name -> [steps, samples], "
            f"got {type(record).__name__}"
        )
    curves = {str(k): _as_array(v, str(k)) for k, v in values.items()}
    if not curves:
        raise ValueError("record: nothing to plot (no recorded measures)")
    shapes = {a.shape for a in curves.values()}
    if len(shapes) > 1:
        raise ValueError(f"record: the measures have different shapes {sorted(shapes)}; expected one [steps, samples]")
    if flip is not None:
        flip = np.asarray(flip.detach().cpu().numpy() if hasattr(flip, "detach") else flip, dtype=float).ravel()
    return curves, flip, title


def _axes_list(ax: Any, count: int) -> list:
    if ax is None:
        return []
    axes = list(np.ravel(ax)) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
    if len(axes) != count:
        raise ValueError(f"ax: expected {count} axes (one per recorded measure), got {len(axes)}")
    return axes


def plot_trajectory(record: Any, path: str | os.PathLike | None = None, ax: Any = None):
    """Plot each recorded measure against the attack step; returns the matplotlib ``Figure``.

    One panel per measure: a thin line per sample, the median in bold, the inter-quartile band
    shaded; a dashed vertical line marks the median step at which the label flips (over the
    samples that start correctly classified and flip). Relative flatness is drawn on a log scale when it spans more than two
    decades. ``ax``: one Axes per measure to draw into (default: a new figure); ``path``: also
    save the figure there (format from the suffix: .png, .pdf, .svg).
    """
    curves, flip, title = _curves(record)
    axes = _axes_list(ax, len(curves))
    if axes:
        fig = axes[0].figure
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.2 * len(curves), 3.4), dpi=100)
        axes = list(np.ravel(fig.subplots(1, len(curves), squeeze=False)))
    flipped = None if flip is None else flip[flip > 0]  # samples correct at first that flip
    for axis, (name, arr) in zip(axes, curves.items()):
        steps = np.arange(arr.shape[0])
        for column in arr.T:
            axis.plot(steps, column, color="0.6", lw=0.6, alpha=0.5)
        q1, med, q3 = np.nanpercentile(arr, [25, 50, 75], axis=1)
        axis.fill_between(steps, q1, q3, color="C0", alpha=0.25, lw=0)
        axis.plot(steps, med, color="C0", lw=2.0, label="median")
        if flipped is not None and flipped.size:
            axis.axvline(float(np.median(flipped)), color="C3", ls="--", lw=1.2, label="label flips (median)")
        positive = arr[np.isfinite(arr) & (arr > 0)]
        if name == "relative_flatness" and positive.size == arr.size and positive.max() > 100 * positive.min():
            axis.set_yscale("log")
        axis.set_xlabel("attack step (0 = clean, last = returned)")
        axis.set_ylabel(LABELS.get(name, name))
        axis.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    if title and ax is None:
        fig.suptitle(f"{title}: {arr.shape[1]} samples")
    if ax is None:
        fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path))
    return fig
