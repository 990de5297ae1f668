"""``data`` arguments: one ``(x, y)`` batch or any re-iterable of batches, validated lazily."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ._state import eval_mode
from ._validation import check_inputs, check_labels


def _as_tensor(a: object) -> object:
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def _is_single_batch(data: object) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(_as_tensor(data[0]), torch.Tensor)
        and isinstance(_as_tensor(data[1]), torch.Tensor)
        and getattr(_as_tensor(data[0]), "dim", lambda: 0)() >= 2
    )


class Batches:
    """A re-iterable view of ``data`` that validates every batch it yields.

    ``data`` is ``(x, y)`` or an iterable of such pairs (a DataLoader, a list). A one-shot
    iterator (a generator) is materialised once, since most measures make several passes.
    """

    def __init__(self, data: object, *, name: str = "data", unit_range: bool = False):
        self.name = name
        self.unit_range = unit_range
        if _is_single_batch(data):
            self._source: object = [tuple(data)]
        elif hasattr(data, "__iter__"):
            self._source = list(data) if iter(data) is data else data  # type: ignore[arg-type]
        else:
            raise TypeError(
                f"{name}: expected an (x, y) pair or an iterable of (x, y) batches, got {type(data).__name__}"
            )
        self._num_samples: int | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count = 0
        for i, item in enumerate(self._source):  # type: ignore[union-attr]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise TypeError(f"{self.name}: batch {i} is a {type(item).__name__}; each batch must be an (x, y) pair")
            x, y = _as_tensor(item[0]), _as_tensor(item[1])
            check_inputs(x, name=f"{self.name}: batch {i} inputs", unit_range=self.unit_range)
            check_labels(y, x.shape[0], name=f"{self.name}: batch {i} labels")
            count += x.shape[0]
            yield x, y
        if count == 0:
            raise ValueError(f"{self.name}: no batches; pass a non-empty (x, y) pair or loader")
        self._num_samples = count

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches moved to ``device`` (inputs also cast to ``dtype``)."""
        for x, y in self:
            yield x.to(device=device, dtype=dtype or x.dtype), y.to(device=device, dtype=torch.long)

    @property
    def batch_count(self) -> int | None:
        """Number of batches when the source knows it without a pass (an ``(x, y)`` pair: 1; a list
        or a sized loader), else None (a loader over an iterable dataset)."""
        try:
            return len(self._source)  # type: ignore[arg-type]
        except TypeError:
            return None

    @property
    def num_samples(self) -> int:
        """Total number of samples (one validating pass if not known yet)."""
        if self._num_samples is None:
            for _ in self:
                pass
        assert self._num_samples is not None
        return self._num_samples


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU/float32 if it has none)."""
    for p in model.parameters():
        return p.device, p.dtype if p.is_floating_point() else torch.float32
    return torch.device("cpu"), torch.float32


def has_conv2d(model: torch.nn.Module) -> bool:
    """Whether ``model`` has ``nn.Conv2d`` layers (the ones a channels_last layout speeds up)."""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def accepts_channels_last(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model``'s forward runs on two samples of ``x`` in channels_last layout.

    A forward that reshapes activations with ``.view`` (``out.view(out.size(0), -1)`` after
    convolutions, common in model code) fails on that layout, so the layout is only used where
    this probe passes. It runs without gradients and in eval mode (the modules' modes put back),
    so it changes no state; any error means "no" (the real call then shows the real error).
    """
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:2].contiguous(memory_format=torch.channels_last))
        return True
    except RuntimeError:
        return False


def cpu_channels_last(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether to pass the image batch ``x`` to ``model`` in channels_last: on a CPU, oneDNN's 2-D
    convolutions are faster on it (``benchmarks/hvp_cost.py``, ``benchmarks/training_steps.py``),
    for a model with ``nn.Conv2d`` layers whose forward accepts it
    (:func:`accepts_channels_last`). The values are the same up to float rounding. (On CUDA,
    scoring converts the model itself: :func:`flatplug._resources.prefer_channels_last`.)"""
    return (
        isinstance(model, torch.nn.Module)  # measures also take plain callables (an attack's get_logits)
        and x.dim() == 4
        and x.device.type == "cpu"
        and has_conv2d(model)
        and accepts_channels_last(model, x)
    )
