"""Deterministic class-balanced subsets, the labelled-images container, and plain batching."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


class LabeledImages(tuple):
    """``(x, y)`` that unpacks like a pair and also carries ``classes``, ``indices``, ``source`` and ``title``.

    ``x``: float32 images in [0, 1], NCHW, on the CPU; ``y``: int64 labels; ``classes``: class
    names, index = label; ``indices``: positions of the chosen samples in the full split (so a
    subset can be reproduced or audited); ``source``: where the data came from; ``title``: the
    data set's usual name ("CIFAR-10 test set"), shown by reports ("" when unknown).
    """

    classes: list[str]
    indices: torch.Tensor
    source: str
    title: str

    def __new__(cls, x: torch.Tensor, y: torch.Tensor, *, classes: Sequence[str], indices: torch.Tensor,
                source: str, title: str = "") -> "LabeledImages":
        obj = super().__new__(cls, (x, y))
        obj.classes = list(classes)
        obj.indices = indices
        obj.source = source
        obj.title = title
        return obj

    @property
    def x(self) -> torch.Tensor:
        return self[0]

    @property
    def y(self) -> torch.Tensor:
        return self[1]

    def __repr__(self) -> str:
        return (f"LabeledImages(x={tuple(self.x.shape)}, y={tuple(self.y.shape)}, "
                f"classes={len(self.classes)}, source={self.source!r})")

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:  # pickling, copying
        return (self.x, self.y), {"classes": self.classes, "indices": self.indices, "source": self.source,
                                  "title": self.title}


def _labels_tensor(labels: object) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    elif not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(list(labels))  # type: ignore[arg-type]
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() != 1:
        raise ValueError(
            f"labels: expected a 1-D sequence of integer class labels, got dtype {labels.dtype} "
            f"and shape {tuple(labels.shape)}"
        )
    return labels.to(torch.long).cpu()


def balanced_subset(labels: object, n: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of a deterministic, class-balanced subset of ``n`` samples.

    Each class present in ``labels`` gets ``n // classes`` samples; the remaining ``n % classes``
    go one each to the first classes in a seeded random order. A class with too few samples gives
    its share to the others (still in that seeded order), so any ``n`` up to ``len(labels)`` works.
    Within a class the samples are a seeded random choice, and the returned indices are shuffled
    (seeded) so that batches mix classes. ``n=None`` means every sample, in a seeded order.
    The same ``labels``, ``n`` and ``seed`` always give the same indices.
    """
    y = _labels_tensor(labels)
    total = y.shape[0]
    if n is None:
        n = total
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an integer number of samples (or None for all), got {type(n).__name__}")
    n = int(n)
    if total == 0:
        raise ValueError("labels: the dataset is empty; there is nothing to choose a subset from")
    if n < 1:
        raise ValueError(f"n: expected at least 1 sample, got {n}")
    if n > total:
        raise ValueError(f"n: asked for {n} samples but the dataset has only {total}; pass n <= {total} or n=None")
    gen = torch.Generator().manual_seed(int(seed))
    classes = torch.unique(y)  # sorted
    members = [torch.nonzero(y == c).flatten() for c in classes]
    members = [m[torch.randperm(m.numel(), generator=gen)] for m in members]
    counts = [m.numel() for m in members]
    order = torch.randperm(len(classes), generator=gen).tolist()  # who gets the remainder first

    # water-filling: classes smaller than the equal share give everything they have, then the
    # rest share equally; the remainder goes one each to the first open classes in seeded order
    quota = [0] * len(classes)
    open_classes = list(order)
    left = n
    while open_classes:
        share = left // len(open_classes)
        small = [c for c in open_classes if counts[c] <= share]
        if not small:
            break
        for c in small:
            quota[c] = counts[c]
            left -= counts[c]
        open_classes = [c for c in open_classes if c not in small]
    share, extra = divmod(left, max(len(open_classes), 1))  # each open class has more than `share`
    for rank, c in enumerate(open_classes):
        quota[c] = share + (1 if rank < extra else 0)
    chosen = torch.cat([m[:q] for m, q in zip(members, quota)])
    return chosen[torch.randperm(chosen.numel(), generator=gen)]


def to_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split ``(x, y)`` into a list of ``(x, y)`` batches of ``batch_size`` (the last may be smaller), in order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels; pass one label per sample")
    bs = int(batch_size)
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)]
