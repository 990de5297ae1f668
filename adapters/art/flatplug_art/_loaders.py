"""ART's data (numpy arrays, ``DataGenerator``s) as the re-iterable ``(x, y)`` batches the core trains on.

Shuffling follows the ART class being replaced, so a seeded session repeats a run exactly as it
would with ART: ART's trainers reshuffle one index array with numpy's global generator every
epoch (:class:`ArrayBatches`), ``PyTorchClassifier.fit`` shuffles with a torch ``DataLoader``
drawing from torch's global generator (:class:`LoaderBatches`). ``seed=`` (flatplug's extra)
replaces numpy's global generator by a private one.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ._labels import index_labels
from ._space import InputSpace


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return int(batch_size)


class ArrayBatches:
    """Mini-batches of numpy arrays as ART's trainers make them: ``np.random.shuffle(ind)`` every pass.

    ``seed=None`` shuffles with numpy's global generator (``np.random.seed(0)`` repeats a run, as
    for ART's ``AdversarialTrainer`` and ``AdversarialTrainerAWPPyTorch``); an integer seed uses
    a private ``np.random.default_rng(seed)``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False, seed: int | None = None):
        batch_size = check_batch_size(batch_size)
        if drop_last and x.shape[0] < batch_size:
            raise ValueError(f"drop_last: {x.shape[0]} samples are fewer than one batch of {batch_size}; "
                             "lower batch_size or pass drop_last=False")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rng = np.random if seed is None else np.random.default_rng(seed)
        self.ind = np.arange(x.shape[0])

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            self.rng.shuffle(self.ind)
        for b in range(len(self)):
            idx = self.ind[b * self.batch_size:(b + 1) * self.batch_size]
            yield torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])


class LoaderBatches:
    """``PyTorchClassifier.fit``'s batches: a shuffling ``DataLoader`` over the arrays, iterated once per pass.

    Iterating draws from torch's global generator exactly as ART's ``fit`` does (the loader's
    base seed, then the sampler's permutation), so ``torch.manual_seed(s)`` repeats ART's order.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, drop_last: bool = False):
        from torch.utils.data import DataLoader, TensorDataset

        batch_size = check_batch_size(batch_size)
        self.loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch_size,
                                 shuffle=True, drop_last=drop_last)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.loader


class GeneratorBatches:
    """Batches of an ART ``DataGenerator`` per pass, converted like ``fit``'s arrays.

    ``batches=None``: ``ceil(size / batch_size)`` calls of ``get_batch()`` per pass (ART's trainers);
    an integer: that many calls; ``"iterator"``: one pass over a ``PyTorchDataGenerator``'s
    ``DataLoader`` (``PyTorchClassifier.fit_generator``'s fast path).
    """

    def __init__(self, generator, nb_classes: int, space: InputSpace, batches: int | str | None = None,
                 strict: bool = True):
        from art.data_generators import DataGenerator

        if not isinstance(generator, DataGenerator):
            raise TypeError(
                f"generator: expected an ART DataGenerator (e.g. art.data_generators.NumpyDataGenerator or "
                f"PyTorchDataGenerator), got {type(generator).__name__}"
            )
        if generator.size is None:
            raise ValueError("generator: its size is None; give the DataGenerator the dataset size so an epoch has an end")
        self.generator, self.nb_classes, self.space, self.strict = generator, nb_classes, space, strict
        self.batches = math.ceil(generator.size / generator.batch_size) if batches is None else batches

    def __len__(self) -> int:
        if self.batches == "iterator":
            return len(self.generator.iterator)
        return int(self.batches)

    def _raw(self):
        if self.batches == "iterator":
            yield from self.generator.iterator
        else:
            for _ in range(int(self.batches)):
                yield self.generator.get_batch()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b, (x, y) in enumerate(self._raw()):
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            u = self.space.to_unit(x, name=f"generator batch {b} inputs", strict=self.strict)
            idx = index_labels(y, u.shape[0], self.nb_classes, name=f"generator batch {b} labels")
            yield torch.from_numpy(u), torch.from_numpy(idx)
