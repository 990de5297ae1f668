"""The penultimate layer: find the ``nn.Linear`` that produces the logits and capture its input features.

Relative flatness (Petzka et al. 2021), FAM, the torchattacks adapter's flatness attacks and
scoring's shared forward pass all need the feature vector ``phi`` that the last ``nn.Linear``
multiplies, from the very forward pass that produced the logits; a forward hook captures it.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ._data import Batches, model_device_dtype
from ._progress import progress
from ._validation import check_logits

__all__ = ["FeatureCapture", "capture_features", "features_and_logits", "find_layer"]


def find_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Linear]:
    """The penultimate-weights layer: ``layer`` by name or module, default the last ``nn.Linear``."""
    named = list(model.named_modules())
    if layer is None:
        linears = [(n, m) for n, m in named if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("layer: the model has no nn.Linear layer; pass layer= the module whose weights multiply the features")
        name, module = linears[-1]
    elif isinstance(layer, str):
        modules = dict(named)
        if layer not in modules:
            close = difflib.get_close_matches(layer, list(modules), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"layer: the model has no module named {layer!r}{hint}")
        name, module = layer, modules[layer]
    elif isinstance(layer, nn.Module):
        matches = [n for n, m in named if m is layer]
        if not matches:
            raise ValueError("layer: the module passed as layer is not part of the model")
        name, module = matches[0], layer
    else:
        raise TypeError(f"layer: expected a module name, an nn.Module or None, got {type(layer).__name__}")
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"layer: {name!r} is a {type(module).__name__}, but relative flatness needs an nn.Linear whose "
            "weights multiply the feature vector (the last Linear layer by default)"
        )
    return name, module


class FeatureCapture:
    """What a forward hook saw on the most recent call of a layer: its input ``phi`` and its output."""

    def __init__(self, exact: bool = False) -> None:
        self.phi: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.exact = exact

    def take(self, logits: torch.Tensor) -> torch.Tensor:
        """The features of the call that produced ``logits``, checked to be that layer's input, then forgotten.

        The layer must produce the logits (equal, or with ``exact=False`` equal up to float noise):
        the condition under which the closed form is the Hessian of the model's loss.
        """
        phi, out = self.phi, self.out
        self.phi = self.out = None
        if phi is None:
            raise ValueError("layer: the chosen layer was not called in the model's forward pass")
        if phi.dim() != 2:
            raise ValueError(f"layer: expected the layer's input to be [N, features], got shape {tuple(phi.shape)}")
        if out is None or out.shape != logits.shape:
            same = False
        elif self.exact:
            same = torch.equal(out.detach(), logits.detach())
        else:
            same = torch.allclose(out, logits, rtol=1e-5, atol=1e-6)
        if not same:
            raise ValueError(
                "layer: the chosen layer's output is not the model's logits; relative flatness is defined "
                "for the layer that produces the logits (pass that layer, or a model ending in it)"
            )
        return phi


@contextmanager
def capture_features(layer: nn.Linear, *, exact: bool = False) -> Iterator[FeatureCapture]:
    """Record ``layer``'s input and output on every call inside the block; the hook is removed after."""
    box = FeatureCapture(exact)

    def hook(_module, inputs, output):
        box.phi, box.out = inputs[0], output

    handle = layer.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def features_and_logits(model: nn.Module, data, layer: nn.Linear, *, quiet: bool = True):
    """One forward pass over ``data`` capturing the inputs of ``layer`` (the features phi).

    Returns ``(phi [N, d], logits [N, K], y [N])``. Checks that ``layer`` produces the logits,
    the condition under which the closed form is the Hessian of the model's loss.
    """
    batches = data if isinstance(data, Batches) else Batches(data)
    device, dtype = model_device_dtype(model)
    phis, all_logits, ys = [], [], []
    with capture_features(layer) as box, torch.no_grad():
        for x, y in progress(batches.to(device, dtype), desc="forward pass", quiet=quiet):
            logits = check_logits(model(x), y)
            phis.append(box.take(logits).detach())
            all_logits.append(logits.detach())
            ys.append(y)
    return torch.cat(phis), torch.cat(all_logits), torch.cat(ys)
