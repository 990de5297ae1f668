"""Point labels that do not overlap each other, the points, or the figure's edge.

Greedy placement, one label at a time (crowded points first): each label tries positions around
its point at growing distances, in eight then sixteen directions, and takes the first whose box
overlaps no placed label, no other point and stays inside the figure (then, for a point in a crowd,
the nearest free place on a grid over the whole figure); a label placed away from its
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


def _candidates(px: float, py: float, w: float, h: float, scale: float, fw: float, fh: float):
    """Offsets (dx, dy) and boxes (x0, y0, x1, y1) to try, nearest first: rings around the point, then a
    grid over the whole figure (for points in a crowd)."""
    offsets = []
    for radius in RADII:
        for cx, cy in (_DIRS8 if radius < 40 else _DIRS16):
            offsets.append((cx * radius * scale, cy * radius * scale))
    ring = np.array(offsets)
    gx = np.arange(2.0, fw - w - 2.0, max(w / 4.0, 4.0))
    gy = np.arange(2.0, fh - h - 2.0, max(h / 2.0, 3.0))
    grid_x0, grid_y0 = (g.ravel() for g in np.meshgrid(gx, gy))
    grid = np.column_stack([grid_x0, grid_y0, grid_x0 + w, grid_y0 + h])
    centre = np.column_stack([(grid[:, 0] + grid[:, 2]) / 2 - px, (grid[:, 1] + grid[:, 3]) / 2 - py])
    grid = grid[np.argsort(np.hypot(centre[:, 0], centre[:, 1]), kind="stable")]
    rx = px + ring[:, 0]
    ry = py + ring[:, 1]
    x0 = np.where(ring[:, 0] > 1e-9, rx, np.where(ring[:, 0] < -1e-9, rx - w, rx - w / 2))
    y0 = np.where(ring[:, 1] > 1e-9, ry, np.where(ring[:, 1] < -1e-9, ry - h, ry - h / 2))
    ring_boxes = np.column_stack([x0, y0, x0 + w, y0 + h])
    boxes = np.vstack([ring_boxes, grid])
    # a grid box is anchored at its lower-left corner: its offset is that corner's
    grid_offsets = grid[:, :2] - np.array([px, py])
    kinds = np.concatenate([np.zeros(len(ring_boxes), bool), np.ones(len(grid), bool)])
    return np.vstack([ring, grid_offsets]), boxes, kinds


def _free(boxes: np.ndarray, taken: np.ndarray, pad: float) -> np.ndarray:
    """Whether each box overlaps none of ``taken`` (with ``pad`` pixels of air)."""
    if len(taken) == 0:
        return np.ones(len(boxes), bool)
    hit = ((boxes[:, None, 0] < taken[None, :, 2] + pad) & (taken[None, :, 0] < boxes[:, None, 2] + pad)
           & (boxes[:, None, 1] < taken[None, :, 3] + pad) & (taken[None, :, 1] < boxes[:, None, 3] + pad))
    return ~hit.any(axis=1)


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
    point_boxes = np.column_stack([pts[:, 0] - r, pts[:, 1] - r, pts[:, 0] + r, pts[:, 1] + r])
    sizes = []
    for name in names:
        t = ax.text(0, 0, name, fontsize=fontsize, parse_math=False)
        bb = t.get_window_extent(renderer)
        t.remove()
        sizes.append((bb.width + 1.0, bb.height + 1.0))
    # crowded points first: they have the fewest free places
    dist = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1) + np.eye(len(pts)) * 1e9
    order = np.argsort(dist.min(axis=1), kind="stable") if len(pts) > 1 else np.arange(len(pts))
    placed = np.zeros((0, 4))
    chosen: dict[int, tuple[float, float, bool]] = {}
    for i in order:
        px, py = pts[i]
        w, h = sizes[i]
        offsets, boxes, grid = _candidates(px, py, w, h, scale, fw, fh)
        inside = (boxes[:, 0] >= 2) & (boxes[:, 1] >= 2) & (boxes[:, 2] <= fw - 2) & (boxes[:, 3] <= fh - 2)
        others = np.delete(point_boxes, i, axis=0)
        ok = inside & _free(boxes, placed, 1.0) & _free(boxes, others, 0.0)
        k = int(np.argmax(ok)) if ok.any() else int(np.argmax(inside)) if inside.any() else 0
        placed = np.vstack([placed, boxes[k]])
        chosen[int(i)] = (float(offsets[k, 0]), float(offsets[k, 1]), bool(grid[k]))
    out = []
    for i, name in enumerate(names):
        dx, dy, corner = chosen[i]
        far = math.hypot(dx, dy) > 9 * scale
        ha, va = ("left", "bottom") if corner else (_align(dx), _valign(dy))
        out.append(ax.annotate(
            name, (x[i], y[i]), xytext=(dx / scale, dy / scale), textcoords="offset points", fontsize=fontsize,
            color="#333333", ha=ha, va=va, parse_math=False, annotation_clip=False,
            arrowprops={"arrowstyle": "-", "color": "#9aa0a6", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3}
            if far else None))
    return out
