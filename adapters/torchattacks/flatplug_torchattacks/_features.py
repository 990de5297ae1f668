"""The penultimate layer's input during an attack's forward pass, and relative flatness from it.

The attacks here need, for the very forward pass that produced the logits, the feature vector
``phi`` that the last ``nn.Linear`` multiplies; a forward hook captures it, and the core's
differentiable closed form (``flatplug.measures.relative_flatness.closed_form``) turns it into
per-sample relative flatness (Petzka et al. 2021) with gradients flowing back to the images.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from flatplug.measures.relative_flatness import closed_form, find_layer


class Captured:
    """What the hook saw in the most recent call of the layer: its input ``phi`` and output."""

    def __init__(self) -> None:
        self.phi: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def take(self, logits: torch.Tensor) -> torch.Tensor:
        """The features of the call that produced ``logits`` (checked), then forget them."""
        phi, out = self.phi, self.out
        self.phi = self.out = None
        if phi is None:
            raise ValueError("layer: the chosen layer was not called in the model's forward pass")
        if phi.dim() != 2:
            raise ValueError(f"layer: expected the layer's input to be [N, features], got shape {tuple(phi.shape)}")
        if out is None or out.shape != logits.shape or not torch.equal(out.detach(), logits.detach()):
            raise ValueError(
                "layer: the chosen layer's output is not the model's logits; relative flatness is defined for the "
                "layer that produces the logits (pass that layer, or a model ending in it)"
            )
        return phi


@contextmanager
def capture(layer: nn.Linear) -> Iterator[Captured]:
    """Record ``layer``'s input and output on every call while inside the block (hook removed after)."""
    box = Captured()

    def hook(_module, inputs, output):
        box.phi, box.out = inputs[0], output

    handle = layer.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def penultimate(model: nn.Module, layer: str | nn.Module | None) -> nn.Linear:
    """The layer whose weights multiply the features (default: the model's last ``nn.Linear``)."""
    return find_layer(model, layer)[1]


def flatness(phi: torch.Tensor, layer: nn.Linear, variant: str) -> torch.Tensor:
    """Per-sample relative flatness of ``layer``'s weights at features ``phi``; differentiable in ``phi``."""
    bias = None if layer.bias is None else layer.bias.detach()
    return closed_form(phi, layer.weight.detach(), bias, variant=variant)
