"""Labels as ART passes them (index, ``[N, 1]`` index, one-hot or probabilities) -> int64 class indices."""

from __future__ import annotations

import numpy as np


def index_labels(y, n: int, nb_classes: int, *, name: str = "y") -> np.ndarray:
    """Class indices ``[N]`` from ``y``, checked against ``n`` inputs and ``nb_classes`` classes."""
    try:
        import torch

        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"{name}: expected numeric labels (class indices or one-hot rows), got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if y.shape[1] != nb_classes:
            raise ValueError(
                f"{name}: one-hot labels have {y.shape[1]} columns but the classifier has {nb_classes} classes; "
                "pass one column per class or class indices"
            )
        idx = np.argmax(y, axis=1)
    elif y.ndim == 1:
        if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{name}: 1-D labels must be whole class indices, got non-integer values")
        idx = y
    else:
        raise ValueError(f"{name}: expected labels of shape [N] or [N, classes], got shape {y.shape}")
    if idx.shape[0] != n:
        raise ValueError(f"{name}: {idx.shape[0]} labels for {n} inputs; pass one label per input")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= nb_classes):
        raise ValueError(
            f"{name}: class indices must lie in 0..{nb_classes - 1} for a classifier with {nb_classes} classes, "
            f"got min {idx.min()} and max {idx.max()}"
        )
    return idx
