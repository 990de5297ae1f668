"""Relative flatness of the penultimate layer (Petzka et al. 2021, kappa_Tr).

Petzka et al. 2021 ("Relative Flatness and Generalization", https://arxiv.org/abs/2001.00939)
define, for the weights ``W`` (rows ``w_s``) that multiply the feature vector ``phi`` and the
Hessian ``H`` of the mean loss w.r.t. ``W`` (blocks ``H_ss'`` w.r.t. rows ``w_s``, ``w_s'``),

* ``variant="pairwise"``: ``kappa_Tr = sum_{s,s'} <w_s, w_s'> Tr(H_ss')``, their relative
  flatness. For logits ``z = W phi + b`` and softmax cross-entropy ``H_ss' = (p_s delta_ss' -
  p_s p_s') phi phi^T`` per sample, so ``kappa_Tr = ||phi||^2 (sum_k p_k ||w_k||^2 - ||sum_k p_k
  w_k||^2)``: the squared feature norm times the variance of the weight vectors under the
  predicted class distribution. This closed form is the one Walter et al. 2025 ("When Flatness
  Does (Not) Guarantee Adversarial Robustness", https://arxiv.org/abs/2510.14231) derive for
  relative flatness; it vanishes when the prediction is confident, right or wrong.
* ``variant="trace"``: ``||W||_F^2 Tr(H)``, the product of the squared weight norm and the trace
  of the whole Hessian w.r.t. ``W`` (for cross-entropy ``Tr(H) = (1 - ||p||^2) ||phi||^2`` per
  sample). It is neither paper's relative flatness: it is the layer-wise simplification that
  Petzka et al.'s synthetic-data code reports next to kappa_Tr, there divided by the number of
  weights ``K d`` (``SyntheticExperiments/utils.py``; not divided here); the FAM regulariser's
  ``layerwise_trace`` multiplies ``Tr(H)`` by the *unsquared* ``||W||_F``; the square here keeps
  the invariance to ``phi -> a phi, W -> W / a``. For a loss convex in the logits it is an upper bound,
  ``kappa_Tr <= ||W||_F^2 Tr(H)`` (``Tr(W W^T G) <= Tr(W W^T) Tr(G)`` for positive semi-definite
  ``G``, the Hessian w.r.t. the logits).

Both are computed per sample and averaged (the Hessian of the mean loss is the mean of the
per-sample Hessians), in eval mode, on the data passed: Petzka et al. define kappa on the training
set (their code: all 50,000 CIFAR-10 training images); flatplug's zoo scoring and leaderboard pass
test images. ``H`` is the Hessian of the data loss alone (their code adds weight decay's ``2 alpha``
to the diagonal blocks of a network trained with it). Their CIFAR-10 correlations use normalised
features (``normalize_features=True``); the default here is the raw kappa_Tr of their definition.
The per-sample values are computed without cancellation (``weight_spread``,
``prediction_spread``), so a confident prediction's tiny value is right in float32 too.

``loss_fn`` (any per-sample ``loss_fn(logits, y)``): the closed form holds for softmax
cross-entropy only (the default). For another loss the block traces come from Hessian-vector
products on the penultimate weights: each sample's loss is differentiated w.r.t. its own copy of
``W``, and since the logits are linear in ``W`` every block ``H_ss'`` of a sample is a multiple
of ``phi phi^T``, whose trace is its quadratic form along ``phi / ||phi||``; ``K`` (classes)
Hessian-vector products per chunk of samples give all ``Tr(H_ss')`` exactly.
``exact=True`` builds the dense Hessian w.r.t. ``W`` with autograd instead: the slow reference.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .._loss import LossFn, cross_entropy, per_sample_loss, resolve_loss
from .._state import preserved
from .._validation import check_choice
from ..features import FeatureCapture, capture_features, features_and_logits, find_layer  # noqa: F401 (re-exported)
from ..registry import ForwardPass, MeasureInfo
from ..types import Measurement

VARIANTS = ("pairwise", "trace")
#: samples per chunk of the Hessian-vector-product path (each holds its own copy of W)
HVP_CHUNK = 256


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
        return phi_sq * weight_spread(p, weight)
    return weight.pow(2).sum() * prediction_spread(p) * phi_sq


def weight_spread(p: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_k p_k ||w_k||^2 - ||sum_k p_k w_k||^2`` per row of ``p``, as ``1/2 p^T D p`` with
    ``D_kl = ||w_k - w_l||^2``: a sum of non-negative terms.

    The difference itself cancels: for a confident prediction both terms are about ``||w_top||^2``
    and the spread is ``p_other`` times smaller, so in float32 it came out 0 or off by more than 1%
    for most test images of a trained MNIST network (771 of 1,000 for ``eran_mnist_6x100_nat``).
    """
    return 0.5 * ((p @ _squared_distances(weight)) * p).sum(1)


def prediction_spread(p: torch.Tensor) -> torch.Tensor:
    """``1 - ||p||^2 = sum_k p_k (1 - p_k)`` per row, with ``1 - p_k`` of the top class summed from
    the other classes' probabilities (``1 - p_top`` cancels for a confident prediction; for every
    other class ``p_k <= 1/2``)."""
    top = F.one_hot(p.argmax(1), p.shape[1]).bool()
    rest = p.masked_fill(top, 0.0).sum(1, keepdim=True)
    return (p * torch.where(top, rest, 1.0 - p)).sum(1)


def _squared_distances(weight: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` squared distances between the rows of ``weight``, from the differences themselves
    (the Gram form ``||a||^2 + ||b||^2 - 2 <a, b>`` cancels for nearby rows); differentiable."""
    k, d = weight.shape
    rows = max(1, 2 ** 22 // max(1, k * d))  # temporaries of at most 4M entries
    return torch.cat([(weight[lo:lo + rows, None, :] - weight[None, :, :]).pow(2).sum(-1)
                      for lo in range(0, k, rows)])


def block_traces(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """Per sample, ``Tr(H_ss')`` for all class pairs: ``[N, K, K]``, by Hessian-vector products on ``W``.

    ``H`` is the Hessian of the sample's ``loss_fn(W phi + b, y)`` w.r.t. ``W`` (its own copy per
    sample, so one product serves all samples). The logits are linear in ``W``, so the block
    ``H_ss'`` is ``G_ss' phi phi^T`` (``G``: the Hessian w.r.t. the logits) and its trace is the
    quadratic form ``<e_s u^T, H e_s' u^T>`` with ``u = phi / ||phi||``: one product per class ``s'``.
    """
    n, d = phi.shape
    k = weight.shape[0]
    out = torch.zeros(n, k, k, dtype=phi.dtype, device=phi.device)
    for lo in range(0, n, HVP_CHUNK):
        ph, yy = phi[lo:lo + HVP_CHUNK].detach(), y[lo:lo + HVP_CHUNK]
        m = ph.shape[0]
        u = ph / ph.norm(dim=1, keepdim=True).clamp_min(torch.finfo(ph.dtype).tiny)
        w_copies = weight.detach().expand(m, k, d).clone().requires_grad_(True)
        with torch.enable_grad():
            logits = torch.einsum("nkd,nd->nk", w_copies, ph)
            if bias is not None:
                logits = logits + bias.detach()
            losses = per_sample_loss(loss_fn, logits, yy)
            if not losses.requires_grad:
                continue  # a loss constant in the logits: a zero Hessian
            (g,) = torch.autograd.grad(losses.sum(), w_copies, create_graph=True)
            if not g.requires_grad:
                continue  # a loss linear in the logits: a zero Hessian
            for t in range(k):
                probe = torch.zeros_like(w_copies)
                probe[:, t, :] = u
                (hv,) = torch.autograd.grad(g, w_copies, grad_outputs=probe, retain_graph=t < k - 1,
                                            allow_unused=True)
                if hv is not None:
                    out[lo:lo + m, :, t] = (hv * u[:, None, :]).sum(-1).detach()
    return out


def from_block_traces(traces: torch.Tensor, weight: torch.Tensor, *, variant: str) -> torch.Tensor:
    """Per-sample kappa from per-sample block traces ``[N, K, K]``."""
    if variant == "pairwise":
        return (traces * (weight @ weight.T)).sum((1, 2))
    return weight.pow(2).sum() * traces.diagonal(dim1=1, dim2=2).sum(1)


def pairwise_from_logit_hessians(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Tensor, loss_fn: LossFn,
) -> torch.Tensor:
    """Per-sample kappa_Tr from the loss's Hessians ``g [N, K, K]`` w.r.t. the logits:
    ``||phi||^2 sum_ss' G_ss' <w_s, w_s'>``; for cross-entropy by :func:`closed_form`, whose sum has
    no cancellation (contracting ``diag(p) - p p^T`` with ``W W^T`` has)."""
    if loss_fn is cross_entropy:
        return closed_form(phi, weight, bias)
    return from_block_traces(g * phi.pow(2).sum(1)[:, None, None], weight, variant="pairwise")


def exact_from_hessian(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, *, variant: str,
    loss_fn: LossFn | None = None,
) -> float:
    """The same quantity from the dense autograd Hessian of the mean loss w.r.t. ``weight``."""
    traces = dense_block_traces(phi, weight, bias, y, loss_fn=loss_fn)
    return float(from_block_traces(traces[None], weight, variant=variant)[0])


def dense_block_traces(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, *,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """``[K, K]``: ``Tr(H_ss')`` of the dense autograd Hessian of the mean loss w.r.t. ``weight``."""
    k, d = weight.shape
    loss_fn = resolve_loss(loss_fn)

    def loss(w_flat: torch.Tensor) -> torch.Tensor:
        return per_sample_loss(loss_fn, F.linear(phi, w_flat.reshape(k, d), bias), y).mean()

    h = torch.autograd.functional.hessian(loss, weight.detach().reshape(-1), vectorize=True).reshape(k, d, k, d)
    return torch.einsum("sjtj->st", h)


def from_features(
    phi: torch.Tensor,
    y: torch.Tensor,
    linear: nn.Linear,
    *,
    layer_name: str,
    variant: str = "pairwise",
    normalize_features: bool = False,
    exact: bool = False,
    loss_fn: LossFn | None = None,
) -> Measurement:
    """The measure from captured features (shared by the measure and by scoring's single forward pass)."""
    check_choice(variant, "variant", VARIANTS)
    loss_fn = resolve_loss(loss_fn)
    start = time.perf_counter()
    weight = linear.weight.detach().to(phi.dtype)
    bias = None if linear.bias is None else linear.bias.detach().to(phi.dtype)
    if normalize_features:
        phi, weight = normalized(phi, weight)
    if exact:
        with torch.enable_grad():
            traces = dense_block_traces(phi, weight, bias, y, loss_fn=loss_fn)
        value = float(from_block_traces(traces[None], weight, variant=variant)[0])
        per_sample, method, hessian_trace = None, "dense_hessian", float(traces.trace())
    elif loss_fn is cross_entropy:
        per_sample, method = closed_form(phi, weight, bias, variant=variant), "closed_form"
        value = float(per_sample.mean())
        p = torch.softmax(F.linear(phi, weight, bias), 1)
        hessian_trace = float((prediction_spread(p) * phi.pow(2).sum(1)).mean())
    else:
        traces = block_traces(phi, weight, bias, y, loss_fn)
        per_sample, method = from_block_traces(traces, weight, variant=variant), "hessian_vector_products"
        value = float(per_sample.mean())
        hessian_trace = float(traces.diagonal(dim1=1, dim2=2).sum(1).mean())
    details = {
        "variant": variant,
        "method": method,
        "layer": layer_name,
        "normalize_features": normalize_features,
        "exact": exact,
        "num_samples": int(phi.shape[0]),
        "feature_dim": int(phi.shape[1]),
        "classes": int(weight.shape[0]),
        "weight_norm_sq": float(weight.pow(2).sum()),
        "mean_feature_norm_sq": float(phi.pow(2).sum(1).mean()),
        "mean_hessian_trace": hessian_trace,  # Tr(H) of the mean loss w.r.t. W, for loss_fn
    }
    return Measurement(
        name="relative_flatness",
        value=value,
        per_sample=None if per_sample is None else per_sample.detach().cpu(),
        details=details,
        seconds=time.perf_counter() - start,
    )


def normalized(phi: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features divided by their scale over the data and weight columns multiplied by it (the same
    function): the standard deviation (Petzka et al.); for a feature constant over the data its
    absolute value; a feature that is zero on all the data is dropped (its weight column changes
    nothing the network computes, so it must not count; Petzka et al.'s code multiplies it by
    ``std = 0`` too)."""
    scale = phi.std(0, unbiased=False)
    scale = torch.where(scale == 0, phi.abs().amax(0), scale)  # a constant feature: |c|
    dead = scale == 0
    safe = torch.where(dead, torch.ones_like(scale), scale)
    return phi / safe, weight * torch.where(dead, torch.zeros_like(scale), scale)


def check_params(*, variant: str, loss_fn: LossFn | None) -> None:
    """Refuse bad settings before any model or data is touched (scoring calls this before any work)."""
    check_choice(variant, "variant", VARIANTS)
    resolve_loss(loss_fn)


def relative_flatness(
    model: nn.Module,
    data,
    *,
    layer: str | nn.Module | None = None,
    variant: str = "pairwise",
    normalize_features: bool = False,
    exact: bool = False,
    loss_fn: LossFn | None = None,
    quiet: bool = False,
) -> Measurement:
    """Relative flatness kappa_Tr of ``layer``'s weights (lower is flatter).

    Petzka et al. 2021, https://arxiv.org/abs/2001.00939; closed form for cross-entropy: Walter et
    al. 2025, https://arxiv.org/abs/2510.14231 (see the module docstring for both variants).
    ``loss_fn``: any per-sample loss (default softmax cross-entropy, by the closed form; another
    loss by Hessian-vector products on the penultimate weights). ``normalize_features=True``
    divides each feature by its standard deviation over the data and multiplies the matching
    weight column by it (Petzka et al.), so the network's function is unchanged and the measure
    becomes invariant to per-feature rescaling (a feature constant over the data is scaled by its
    value, one that is zero on all of it is dropped: :func:`normalized`). ``per_sample``: each
    sample's kappa (None with ``exact=True``); ``details["method"]`` says how it was computed,
    ``details["mean_hessian_trace"]`` is ``Tr(H)`` for ``loss_fn``.
    """
    check_params(variant=variant, loss_fn=loss_fn)  # before the forward pass
    start = time.perf_counter()
    name, linear = find_layer(model, layer)
    with preserved(model):
        phi, _, y = features_and_logits(model, data, linear, quiet=quiet)
        result = from_features(phi, y, linear, layer_name=name, variant=variant,
                               normalize_features=normalize_features, exact=exact, loss_fn=loss_fn)
    result.seconds = time.perf_counter() - start
    return result


def from_forward(forward: ForwardPass, **params) -> Measurement:
    """The measure from scoring's shared forward pass (its captured features and last ``nn.Linear``)."""
    phi, y, layer, name = forward.penultimate("relative flatness")
    return from_features(phi, y, layer, layer_name=name, **params)


INFO = MeasureInfo(
    version="2",  # 2: per-sample values without cancellation; dead features dropped by normalize_features
    paper="Petzka et al. 2021, https://arxiv.org/abs/2001.00939; closed form: Walter et al. 2025, "
          "https://arxiv.org/abs/2510.14231",
    default=True,
    from_forward=from_forward,
    forward_params=frozenset({"variant", "normalize_features", "loss_fn"}),
    check=check_params,
)
