"""The loss convention shared by every measure: per-sample losses, reduced by the measure."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

#: ``loss_fn(logits, y) -> per-sample losses [N]`` (reduction "none").
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample softmax cross-entropy, the default loss of every measure."""
    return F.cross_entropy(logits, y, reduction="none")


def resolve_loss(loss_fn: LossFn | None) -> LossFn:
    if loss_fn is None:
        return cross_entropy
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(logits, y) -> per-sample losses, got {loss_fn!r}")
    return loss_fn


def per_sample_loss(loss_fn: LossFn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Call ``loss_fn`` and check it returned one loss per sample."""
    losses = loss_fn(logits, y)
    if not isinstance(losses, torch.Tensor) or losses.shape != (y.shape[0],):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn: expected per-sample losses of shape [{y.shape[0]}] (reduction='none'), got {shape}"
        )
    return losses
