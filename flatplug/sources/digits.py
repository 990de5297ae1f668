"""scikit-learn's 8x8 handwritten digits: a tiny real image dataset that needs no download."""

from __future__ import annotations

import torch

from .subset import LabeledImages, balanced_subset
from .titles import title

SPLITS = ("test", "train", "all")
#: Every ``TEST_EVERY``-th sample of each class (in the dataset's own order) is a test sample.
TEST_EVERY = 4


def _split_mask(y: torch.Tensor) -> torch.Tensor:
    """``True`` for test samples: a fixed stratified split, the same on every machine, no RNG."""
    rank = torch.zeros_like(y)
    for c in torch.unique(y):
        where = torch.nonzero(y == c).flatten()
        rank[where] = torch.arange(where.numel())
    return rank % TEST_EVERY == TEST_EVERY - 1


def load_digits(n: int | None = None, split: str = "test", seed: int = 0) -> LabeledImages:
    """The UCI/scikit-learn digits (1,797 8x8 grey images, 10 classes) as ``(x, y)``.

    ``x``: float32 ``[N, 1, 8, 8]`` in [0, 1] (the 0..16 pixel counts divided by 16); ``y``: int64.
    ``split``: ``"test"`` (a quarter of each class: its 4th, 8th, ... sample, ~450 images), ``"train"``
    (the rest) or ``"all"``. ``n``: a deterministic class-balanced subset (see ``balanced_subset``),
    ``None`` for the whole split.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from exc
    bunch = _sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    if split == "all":
        where = torch.arange(labels.numel())
    else:
        test = _split_mask(labels)
        where = torch.nonzero(test if split == "test" else ~test).flatten()
    pick = balanced_subset(labels[where], n, seed)
    x = (images[where[pick]] / 16.0).unsqueeze(1).contiguous()
    return LabeledImages(x, labels[where[pick]].clone(), classes=[str(d) for d in range(10)], indices=pick,
                         source=f"sklearn.datasets.load_digits (split={split})", title=title("digits", split))
