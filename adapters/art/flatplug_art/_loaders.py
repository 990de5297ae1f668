"""ART's data (numpy arrays, ``DataGenerator``s) as the re-iterable ``(x, y)`` batches the core trains on."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ._labels import index_labels
from ._space import InputSpace


class ArrayBatches:
    """Shuffled mini-batches of numpy arrays, a fresh order every pass (seeded by ``seed``)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False, seed: int | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if drop_last and x.shape[0] < batch_size:
            raise ValueError(f"drop_last: {x.shape[0]} samples are fewer than one batch of {batch_size}; "
                             "lower batch_size or pass drop_last=False")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])


class GeneratorBatches:
    """``ceil(size / batch_size)`` batches of an ART ``DataGenerator`` per pass, converted like ``fit``'s arrays."""

    def __init__(self, generator, nb_classes: int, space: InputSpace):
        from art.data_generators import DataGenerator

        if not isinstance(generator, DataGenerator):
            raise TypeError(
                f"generator: expected an ART DataGenerator (e.g. art.data_generators.NumpyDataGenerator or "
                f"PyTorchDataGenerator), got {type(generator).__name__}"
            )
        if generator.size is None:
            raise ValueError("generator: its size is None; give the DataGenerator the dataset size so an epoch has an end")
        self.generator, self.nb_classes, self.space = generator, nb_classes, space
        self.batches = math.ceil(generator.size / generator.batch_size)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(self.batches):
            x, y = self.generator.get_batch()
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            u = self.space.to_unit(x, name=f"generator batch {b} inputs")
            idx = index_labels(y, u.shape[0], self.nb_classes, name=f"generator batch {b} labels")
            yield torch.from_numpy(u), torch.from_numpy(idx)
