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

import time

import torch
import torch.nn.functional as F
from torch import nn

from .._state import preserved
from .._validation import check_choice
from ..features import FeatureCapture, capture_features, features_and_logits, find_layer  # noqa: F401 (re-exported)
from ..registry import ForwardPass, MeasureInfo
from ..types import Measurement

VARIANTS = ("pairwise", "trace")


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


def from_forward(forward: ForwardPass, **params) -> Measurement:
    """The measure from scoring's shared forward pass (its captured features and last ``nn.Linear``)."""
    if forward.features is None or forward.layer is None:
        raise ValueError("relative flatness needs the features of the layer that produces the logits; "
                         "the shared forward pass has none for this model")
    return from_features(forward.features, forward.y, forward.layer, layer_name=forward.layer_name or "", **params)


INFO = MeasureInfo(
    version="1",
    paper="Petzka et al. 2021, https://arxiv.org/abs/2001.00939; closed form: Walter et al. 2025, "
          "https://arxiv.org/abs/2510.14231",
    default=True,
    from_forward=from_forward,
    forward_params=frozenset({"variant", "normalize_features"}),
)
