"""The objects that flow through flatplug.

* ``Batch``: ``(x, y)`` images in [0, 1] (NCHW float) and integer labels, or any iterable of such pairs;
* :class:`Measurement`: what every measure returns (``name``, ``value``, ``per_sample``, ``details``);
* :class:`LoadedModel`: a model ready to score (its module takes [0, 1] images: normalisation inside);
* :class:`ModelSource`: what a registered source factory returns (``names``, ``load``, and optionally
  ``fingerprint`` for content-keyed results).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Tuple, Union, runtime_checkable

import torch
from torch import nn

#: ``(x, y)``: images in [0, 1] (NCHW float) and integer labels, or an iterable of such pairs.
Batch = Union[Tuple[torch.Tensor, torch.Tensor], Iterable[Tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Measurement:
    """The result of one measure on one model.

    ``details`` holds JSON-able extras (eigenvalues, curves, settings) that a store can keep;
    ``artifacts`` holds tensors that are useful in-process but are not stored (eigenvectors).
    """

    name: str
    value: float
    per_sample: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    artifacts: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)


@dataclass
class LoadedModel:
    """A model ready to score: ``module`` maps [0, 1] images to logits (normalisation inside)."""

    name: str
    module: nn.Module
    dataset: str
    threat_model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ModelSource(Protocol):
    """What a registered source factory returns: lists model names and loads them.

    Sources are registered as factories, ``register("zoo", factory)`` with
    ``factory(**options) -> ModelSource`` (options such as ``manifest=`` or ``model_dir=``
    come from the caller or the CLI), so a worker process can rebuild the source from
    plain options and load the model itself.
    """

    def names(self, dataset: str | None = None) -> list[str]:
        """Model names available (for ``dataset`` when given)."""
        ...

    def load(self, name: str, device: str | torch.device = "cpu") -> LoadedModel:
        """The model ``name`` as a :class:`LoadedModel` whose module takes [0, 1] images."""
        ...

    # Optional: ``fingerprint(name) -> str | None``, a digest of the model's content (its checkpoint
    # files and whatever turns them into the model) computed without loading it, e.g. with
    # ``flatplug.sources.fingerprint.file_sha256``. Scoring keys every stored result by it, so a
    # retrained checkpoint under the same name is scored afresh. Without it (or when it returns None),
    # scoring loads the model and hashes its parameters and buffers.
    # Optional: ``check(name) -> None``, raising an error that says what to provide when ``name``
    # cannot be loaded as things stand (a checkpoint file missing and no way to fetch it), cheaply and
    # without loading; ``flatplug score`` calls it for every model before the first one is scored.


#: A registered dataset loader: ``loader(path=None, n=None, seed=0, **options) -> (x, y)``
#: with x float32 [N, C, H, W] in [0, 1] and y int64, a deterministic class-balanced subset of size n.
DatasetLoader = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
