"""The report's figures: one scatter per (measure, accuracy) pair with its correlation, and landscapes."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .._stats import Correlation
from .labels import place_labels


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit].strip("-").lower() or "x"


def corr_text(c: Correlation) -> str:
    if c.reason:
        return f"\u03c1, \u03c4 undefined: {c.reason}"

    def ci(v: float, lo_hi: tuple[float, float]) -> str:
        lo, hi = lo_hi
        return f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else f"{v:+.2f}"

    return f"\u03c1 = {ci(c.spearman, c.spearman_ci)}   \u03c4 = {ci(c.kendall, c.kendall_ci)}   (n = {c.n})"


def wrap(text: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def new_figure(**kwargs):
    """A matplotlib Figure with its own Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def scatter(path: Path, sub, x_col: str, y_col: str, corr: Correlation, dataset: str,
            flagged: frozenset[str] = frozenset()) -> list:
    """Write the scatter of ``x_col`` against ``y_col``, every model labelled; returns the label artists.

    Models in ``flagged`` (gradient masking) are drawn as orange crosses.
    """
    x = sub[x_col].to_numpy(dtype=float)
    y = sub[y_col].to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    names = [str(m) for m in sub["model"].to_numpy()[keep]]
    x, y = x[keep], y[keep]
    many = len(x) > 12
    fig = new_figure(figsize=(7.2, 5.6) if many else (6.0, 4.6), dpi=100)
    fig.subplots_adjust(left=0.14, right=0.96, bottom=0.12, top=0.84)  # fixed margins: no layout engine
    ax = fig.add_subplot()
    masked = np.array([n in flagged for n in names], dtype=bool)
    ax.scatter(x[~masked], y[~masked], s=28, color="#1f6feb", edgecolor="white", linewidth=0.6, zorder=3)
    if masked.any():
        ax.scatter(x[masked], y[masked], s=36, marker="X", color="#d1570b", zorder=4,
                   label="gradient masking flagged")
        ax.legend(fontsize=7, loc="best", frameon=False)
    log = bool(len(x)) and bool(np.all(x > 0)) and x.max() / x.min() > 100
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.12 if many else 0.08, y=0.12 if many else 0.1)
    x_label = f"{x_col} (log scale)" if log else x_col
    ax.set_xlabel(x_label, parse_math=False)
    ax.set_ylabel(y_col, parse_math=False)
    ax.grid(True, color="#e5e7eb", zorder=0)
    ax.set_title(wrap(f"{dataset}: {x_col} vs {y_col}", 80) + "\n" + wrap(corr_text(corr), 90), fontsize=9,
                 parse_math=False)
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())  # freeze the limits, so the labels are placed in the final coordinates
    ax.set_ylim(ax.get_ylim())
    labels = place_labels(ax, x, y, names, fontsize=6.5 if many else 7)
    fig.savefig(path)
    return labels


def landscape_groups(rows) -> list[tuple[str, str, str, list[tuple[str, dict]]]]:
    """(dataset, measure name, params key, [(model, details)]) for measure rows that carry a landscape."""
    groups: dict[tuple[str, str, str], list[tuple[str, dict]]] = {}
    ok = rows[(rows["kind"] == "measure") & (rows["status"] == "ok")]
    for r in ok.itertuples(index=False):
        d = r.details if isinstance(r.details, dict) else {}
        if isinstance(d.get("alphas"), list) and isinstance(d.get("losses"), list) and d["losses"]:
            groups.setdefault((r.dataset, r.name, r.pkey), []).append((r.model, d))
    return [(k[0], k[1], k[2], v) for k, v in sorted(groups.items())]


def curve(values: Any) -> np.ndarray | None:
    try:
        arr = np.array([math.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 else None


def surface(values: Any) -> np.ndarray | None:
    try:
        arr = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 2 else None


def landscape_figure(path: Path, dataset: str, title: str, curves: list[tuple[str, dict]]) -> bool:
    """One figure for a landscape setting: 1-D curves of every model together, or one contour per model."""
    two_d = isinstance(curves[0][1]["losses"][0], list)
    if not two_d:
        fig = new_figure(figsize=(8.0, 4.4), dpi=100)
        fig.subplots_adjust(left=0.09, right=0.76, bottom=0.12, top=0.9)
        ax = fig.add_subplot()
        handles, names = [], []
        for model, d in curves:
            a, l = curve(d["alphas"]), curve(d["losses"])
            if a is None or l is None or a.shape != l.shape:
                continue
            (h,) = ax.plot(a, l, marker="o", markersize=2.5, linewidth=1.3)
            handles.append(h)
            names.append(model)
        if not handles:
            return False
        leg = ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        for t in leg.get_texts():
            t.set_parse_math(False)
        ax.set_xlabel("\u03b1 (step along the direction)")
        ax.set_ylabel("loss")
        ax.grid(True, color="#e5e7eb")
        ax.set_title(wrap(f"{dataset}: {title}", 90), fontsize=9, parse_math=False)
        fig.savefig(path)
        return True
    usable = []
    for model, d in curves:
        a, b, z = curve(d["alphas"]), curve(d.get("betas", [])), surface(d["losses"])
        if a is not None and b is not None and z is not None and z.shape == (a.size, b.size) and b.size > 1:
            usable.append((model, a, b, z))
    if not usable:
        return False
    cols = min(4, len(usable))
    rows_n = math.ceil(len(usable) / cols)
    fig = new_figure(figsize=(3.2 * cols + 0.6, 2.9 * rows_n + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False)
    for ax, (model, a, b, z) in zip(axes.flat, usable):
        cs = ax.contourf(b, a, z, levels=14, cmap="viridis")
        ax.plot([0], [0], marker="+", color="white", markersize=8)
        fig.colorbar(cs, ax=ax, shrink=0.85)
        ax.set_title(model, fontsize=8, parse_math=False)
        ax.set_xlabel("\u03b2", fontsize=8)
        ax.set_ylabel("\u03b1", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(usable):]:
        ax.set_axis_off()
    fig.suptitle(wrap(f"{dataset}: {title} (loss)", 110), fontsize=9, parse_math=False)
    fig.savefig(path)
    return True
