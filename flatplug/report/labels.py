"""Point labels that do not overlap each other, the points, or the figure's edge.

Greedy placement, one label at a time (crowded points first): each label tries positions around
its point at growing distances, in eight then sixteen directions, and takes the first whose box
overlaps no placed label, no other point and stays inside the figure; a label placed away from its
point gets a thin leader line. Boxes are measured with the figure's own renderer, so what is
checked is what is drawn.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

RADII = (3, 8, 14, 22, 32, 44, 58, 76, 98, 124)  # points
_DIRS8 = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
_DIRS16 = _DIRS8 + [(math.cos(a), math.sin(a)) for a in np.deg2rad([22.5, 67.5, 112.5, 157.5, 202.5, 247.5, 292.5,
                                                                       337.5])]


def _box(px: float, py: float, w: float, h: float, dx: float, dy: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a label whose anchor sits at (px + dx, py + dy), aligned away from the point."""
    ax = px + dx
    ay = py + dy
    x0 = ax if dx > 1e-9 else ax - w if dx < -1e-9 else ax - w / 2
    y0 = ay if dy > 1e-9 else ay - h if dy < -1e-9 else ay - h / 2
    return x0, y0, x0 + w, y0 + h


def _overlap(a, b, pad: float = 1.0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _align(d: float) -> str:
    return "left" if d > 1e-9 else "right" if d < -1e-9 else "center"


def _valign(d: float) -> str:
    return "bottom" if d > 1e-9 else "top" if d < -1e-9 else "center"


def place_labels(ax, x: Sequence[float], y: Sequence[float], names: Sequence[str], *, fontsize: float = 7,
                 marker_radius: float = 3.5) -> list:
    """Annotate each point ``(x[i], y[i])`` with ``names[i]`` without overlaps; returns the annotations.

    Call after the axes' limits and scales are final (this reads the data-to-pixel transform).
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([np.asarray(x, float), np.asarray(y, float)]))
    fw, fh = fig.bbox.width, fig.bbox.height
    r = marker_radius * scale
    point_boxes = [(px - r, py - r, px + r, py + r) for px, py in pts]
    sizes = []
    for name in names:
        t = ax.text(0, 0, name, fontsize=fontsize, parse_math=False)
        bb = t.get_window_extent(renderer)
        t.remove()
        sizes.append((bb.width, bb.height))
    # crowded points first: they have the fewest free places
    dist = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1) + np.eye(len(pts)) * 1e9
    order = np.argsort(dist.min(axis=1)) if len(pts) > 1 else np.arange(len(pts))
    placed: list[tuple[float, float, float, float]] = []
    chosen: dict[int, tuple[float, float]] = {}
    for i in order:
        px, py = pts[i]
        w, h = sizes[i]
        best = None
        for radius in RADII:
            for cx, cy in (_DIRS8 if radius < 40 else _DIRS16):
                dx, dy = cx * radius * scale, cy * radius * scale
                box = _box(px, py, w, h, dx, dy)
                if box[0] < 2 or box[1] < 2 or box[2] > fw - 2 or box[3] > fh - 2:
                    continue
                if any(_overlap(box, b) for b in placed):
                    continue
                if any(_overlap(box, b, pad=0.0) for j, b in enumerate(point_boxes) if j != i):
                    continue
                best = (dx, dy, box)
                break
            if best:
                break
        if best is None:  # nowhere free: the farthest position inside the figure, drawn anyway
            dx, dy = 0.0, RADII[-1] * scale
            best = (dx, dy, _box(px, py, w, h, dx, dy))
        placed.append(best[2])
        chosen[int(i)] = (best[0], best[1])
    out = []
    for i, name in enumerate(names):
        dx, dy = chosen[i]
        far = math.hypot(dx, dy) > 9 * scale
        out.append(ax.annotate(
            name, (x[i], y[i]), xytext=(dx / scale, dy / scale), textcoords="offset points", fontsize=fontsize,
            color="#333333", ha=_align(dx), va=_valign(dy), parse_math=False, annotation_clip=False,
            arrowprops={"arrowstyle": "-", "color": "#9aa0a6", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3}
            if far else None))
    return out
