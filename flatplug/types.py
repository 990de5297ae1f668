"""The objects that flow through flatplug (see DESIGN.md, "The objects that flow")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Tuple, Union

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
