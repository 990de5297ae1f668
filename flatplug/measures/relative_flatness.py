"""Relative flatness of the penultimate layer (Petzka et al. 2021, kappa_Tr).

For logits ``z = W phi + b`` and softmax cross-entropy, the Hessian block of the loss
w.r.t. rows ``w_s, w_s'`` of ``W`` is ``(p_s delta_ss' - p_s p_s') phi phi^T``, so

* ``variant="pairwise"`` (Petzka's kappa_Tr):
  ``sum_{s,s'} <w_s, w_s'> Tr(H_ss') = ||phi||^2 (sum_k p_k ||w_k||^2 - ||sum_k p_k w_k||^2)``;
* ``variant="trace"`` (the form in Walter et al. 2025):
  ``||W||_F^2 Tr(H)`` with ``Tr(H) = (1 - ||p||^2) ||phi||^2``.

Both are computed per sample and averaged (the Hessian of the mean loss is the mean of
the per-sample Hessians). ``exact=True`` builds the Hessian w.r.t. ``W`` with autograd
instead: the slow reference.
"""

from __future__ import annotations

import difflib
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .._data import Batches, model_device_dtype
from .._progress import progress
from .._state import preserved
from .._validation import check_choice, check_logits
from ..types import Measurement

VARIANTS = ("pairwise", "trace")


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


def closed_form(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, variant: str = "pairwise"
) -> torch.Tensor:
    """Per-sample relative flatness for softmax cross-entropy; differentiable in all inputs.

    ``phi``: features ``[N, d]``; ``weight``: ``[K, d]``; ``bias``: ``[K]`` or None.
    """
    check_choice(variant, "variant", VARIANTS)
    p = torch.softmax(F.linear(phi, weight, bias), dim=1)
    phi_sq = phi.pow(2).sum(1)
    if variant == "pairwise":
        w_sq = weight.pow(2).sum(1)  # ||w_k||^2
        mean_w = p @ weight  # sum_k p_k w_k
        return phi_sq * ((p * w_sq).sum(1) - mean_w.pow(2).sum(1))
    return weight.pow(2).sum() * (1.0 - p.pow(2).sum(1)) * phi_sq


def exact_from_hessian(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, *, variant: str
) -> float:
    """The same quantity from the autograd Hessian of the mean cross-entropy w.r.t. ``weight``."""
    k, d = weight.shape

    def loss(w_flat: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(phi, w_flat.reshape(k, d), bias), y)

    h = torch.autograd.functional.hessian(loss, weight.detach().reshape(-1), vectorize=True).reshape(k, d, k, d)
    block_traces = torch.einsum("sjtj->st", h)  # Tr(H_{s,s'})
    if variant == "pairwise":
        return float((weight @ weight.T * block_traces).sum())
    return float(weight.pow(2).sum() * block_traces.trace())


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
        for x, y in progress(batches.to(device, dtype), desc="relative flatness", quiet=quiet):
            logits = check_logits(model(x), y)
            phis.append(box.take(logits).detach())
            all_logits.append(logits.detach())
            ys.append(y)
    return torch.cat(phis), torch.cat(all_logits), torch.cat(ys)


def from_features(
    phi: torch.Tensor,
    y: torch.Tensor,
    linear: nn.Linear,
    *,
    layer_name: str,
    variant: str = "pairwise",
    normalize_features: bool = False,
    exact: bool = False,
) -> Measurement:
    """The measure from captured features (shared by the measure and by scoring's single forward pass)."""
    check_choice(variant, "variant", VARIANTS)
    start = time.perf_counter()
    weight = linear.weight.detach().to(phi.dtype)
    bias = None if linear.bias is None else linear.bias.detach().to(phi.dtype)
    if normalize_features:
        std = phi.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        phi, weight = phi / std, weight * std
    if exact:
        with torch.enable_grad():
            value = exact_from_hessian(phi, weight, bias, y, variant=variant)
        per_sample = None
    else:
        per_sample = closed_form(phi, weight, bias, variant=variant)
        value = float(per_sample.mean())
    p = torch.softmax(F.linear(phi, weight, bias), 1)
    details = {
        "variant": variant,
        "layer": layer_name,
        "normalize_features": normalize_features,
        "exact": exact,
        "num_samples": int(phi.shape[0]),
        "feature_dim": int(phi.shape[1]),
        "classes": int(weight.shape[0]),
        "weight_norm_sq": float(weight.pow(2).sum()),
        "mean_feature_norm_sq": float(phi.pow(2).sum(1).mean()),
        "mean_hessian_trace": float(((1 - p.pow(2).sum(1)) * phi.pow(2).sum(1)).mean()),
    }
    return Measurement(
        name="relative_flatness",
        value=value,
        per_sample=None if per_sample is None else per_sample.detach().cpu(),
        details=details,
        seconds=time.perf_counter() - start,
    )


def relative_flatness(
    model: nn.Module,
    data,
    *,
    layer: str | nn.Module | None = None,
    variant: str = "pairwise",
    normalize_features: bool = False,
    exact: bool = False,
    quiet: bool = False,
) -> Measurement:
    """Relative flatness kappa_Tr of ``layer``'s weights for softmax cross-entropy (lower is flatter).

    ``normalize_features=True`` divides each feature by its standard deviation over the data
    and multiplies the matching weight column by it (Petzka et al.), so the network's function
    is unchanged and the measure becomes invariant to per-feature rescaling.
    """
    check_choice(variant, "variant", VARIANTS)
    start = time.perf_counter()
    name, linear = find_layer(model, layer)
    with preserved(model):
        phi, _, y = features_and_logits(model, data, linear, quiet=quiet)
        result = from_features(phi, y, linear, layer_name=name, variant=variant,
                               normalize_features=normalize_features, exact=exact)
    result.seconds = time.perf_counter() - start
    return result
