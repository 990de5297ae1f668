"""The record a ``TrajectoryRecorder`` keeps: per step and per sample, the quantities along an attack's path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Trajectory:
    """Per-step, per-sample values along one attack run on one batch.

    Step 0 is the clean images, the last step the images the attack returned, and the steps
    between are the distinct points at which the attack evaluated its gradient (for PGD-like
    attacks: the random start and the iterates), in order.

    ``values``: measure name -> ``[steps, N]`` float64 tensor (``"loss"``, ``"confidence"``,
    ``"relative_flatness"``, as requested); ``predicted``: ``[steps, N]`` predicted classes;
    ``labels``: the labels passed to the attack; ``targets``: the classes a targeted attack aimed
    at (None in the default mode); ``settings``: JSON-able description of the run.
    """

    attack: str
    values: dict[str, torch.Tensor]
    predicted: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        """Number of recorded points, clean and returned images included."""
        return int(self.predicted.shape[0])

    @property
    def flipped(self) -> torch.Tensor:
        """``[steps, N]`` bool: misclassified (default mode) or classified as the target (targeted)."""
        if self.targets is not None:
            return self.predicted == self.targets.view(1, -1)
        return self.predicted != self.labels.view(1, -1)

    @property
    def flip_step(self) -> torch.Tensor:
        """``[N]``: the first step at which each sample is flipped, -1 if it never is."""
        flipped = self.flipped
        first = flipped.int().argmax(0)
        return torch.where(flipped.any(0), first, torch.full_like(first, -1))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (lists of lists)."""
        return {
            "attack": self.attack,
            "values": {k: v.tolist() for k, v in self.values.items()},
            "predicted": self.predicted.tolist(),
            "labels": self.labels.tolist(),
            "targets": None if self.targets is None else self.targets.tolist(),
            "flip_step": self.flip_step.tolist(),
            "settings": dict(self.settings),
        }
