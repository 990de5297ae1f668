"""The penultimate layer's input during an attack's forward pass, and relative flatness from it.

The attacks here need, for the very forward pass that produced the logits, the feature vector
``phi`` that the last ``nn.Linear`` multiplies; a forward hook captures it, and the core's
differentiable closed form (``flatplug.measures.relative_flatness.closed_form``) turns it into
per-sample relative flatness (Petzka et al. 2021) with gradients flowing back to the images.
"""

from __future__ import annotations

import torch
from torch import nn

from flatplug.features import capture_features, find_layer
from flatplug.measures.relative_flatness import closed_form


def capture(layer: nn.Linear):
    """Record ``layer``'s input and output while inside the block (the core's hook, exact logits check):
    ``box.take(logits)`` gives the features of the call that produced ``logits``."""
    return capture_features(layer, exact=True)


def penultimate(model: nn.Module, layer: str | nn.Module | None) -> nn.Linear:
    """The layer whose weights multiply the features (default: the model's last ``nn.Linear``)."""
    return find_layer(model, layer)[1]


def flatness(phi: torch.Tensor, layer: nn.Linear, variant: str) -> torch.Tensor:
    """Per-sample relative flatness of ``layer``'s weights at features ``phi``; differentiable in ``phi``."""
    bias = None if layer.bias is None else layer.bias.detach()
    return closed_form(phi, layer.weight.detach(), bias, variant=variant)
