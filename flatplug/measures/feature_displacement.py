"""From input space to feature space: how far an attack moves the penultimate features.

Relative flatness (Petzka et al. 2021) controls the loss only for feature perturbations
``phi -> phi + delta A phi`` with small ``delta`` (feature robustness). Walter et al. 2025 ("When
Flatness Does (Not) Guarantee Adversarial Robustness", https://arxiv.org/abs/2510.14231) link
this to input space: an attack of size ``eps`` on ``x`` moves the features by some relative
amount, and flatness bounds the loss change only while that amount is small (local, not global
robustness); adversarial examples end in flat regions where the model is confidently wrong.

For every sample, with ``x'`` the attack's example (the core PGD by default, or any ``attack``):

* ``displacement = ||phi(x') - phi(x)|| / ||phi(x)||``, the ``delta`` of feature robustness: the
  displacement is ``delta A phi`` with ``A = v u^T`` (``u, v`` unit), an ``A`` of spectral norm 1;
* ``loss_change = loss(x') - loss(x)`` and ``taylor``: its second-order Taylor prediction from the
  clean logits, ``g^T dz + dz^T G dz / 2`` with ``dz = W (phi(x') - phi(x))`` (``g``, ``G``: the
  loss's gradient and Hessian w.r.t. the logits at ``x``), accurate to third order in ``dz``;
* ``flatness_term = displacement^2 kappa(x) / 2``, which bounds the second-order term
  ``dz^T G dz / 2`` for a loss convex in the logits (``kappa``: per-sample relative flatness);
* ``confidence`` (largest softmax probability at ``x'``), ``correct`` at ``x`` and ``x'``, and the
  per-sample relative flatness ``kappa_clean`` at ``x`` and ``kappa_adv`` at ``x'``.

Per-sample quantities are computed in float64 from the model's features and logits. ``value``:
the median displacement (medians average the two middle values). ``details``: summaries
(robust accuracy, how many attacked samples are wrong and confidently so, median kappa before and
after, the Taylor prediction's median relative error). ``artifacts["per_sample"]``: every
per-sample tensor above.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._data import Batches, model_device_dtype
from .._loss import LossFn, per_sample_loss, resolve_loss
from .._progress import progress
from .._state import preserved
from .._validation import check_choice, check_logits, check_positive
from ..attacks import NORMS, pgd
from ..features import capture_features, find_layer
from ..registry import MeasureInfo
from ..types import Measurement
from .feature_robustness import logit_hessians
from .relative_flatness import pairwise_from_logit_hessians

__all__ = ["feature_displacement"]

KEYS = ("displacement", "loss_clean", "loss_adv", "loss_change", "taylor", "flatness_term", "confidence",
        "correct_clean", "correct_adv", "kappa_clean", "kappa_adv")


def _median(t: torch.Tensor) -> float | None:
    """The median (the mean of the two middle values for an even count; ``torch.median`` takes the
    lower one), None for no values."""
    return float(t.double().quantile(0.5)) if t.numel() else None


def check_params(*, eps: float, norm: str, steps: int, step_size: float | None, seed: int | None,
                 attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, confident: float,
                 loss_fn: LossFn | None) -> None:
    """Refuse bad settings before any model or data is touched (scoring calls this before any work)."""
    check_positive(eps, "eps", allow_zero=True)
    check_choice(norm, "norm", NORMS)
    try:
        inside = not isinstance(confident, bool) and 0.0 < float(confident) < 1.0
    except (TypeError, ValueError):
        inside = False
    if not inside:
        raise ValueError(f"confident: expected a probability in (0, 1), got {confident!r}")
    if attack is not None and not callable(attack):
        raise TypeError(f"attack: expected a callable attack(x, y) -> x_adv, got {type(attack).__name__}")
    if attack is None:  # the settings of the core PGD
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected a positive integer number of PGD steps, got {steps!r}")
        if step_size is not None:
            check_positive(step_size, "step_size")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an integer (or None), got {type(seed).__name__}")
    resolve_loss(loss_fn)


def feature_displacement(
    model: nn.Module,
    data,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    layer: str | nn.Module | None = None,
    confident: float = 0.9,
    loss_fn: LossFn | None = None,
    quiet: bool = False,
) -> Measurement:
    """Per-sample relative feature displacement, loss change and confidence under an attack of size ``eps``.

    Walter et al. 2025, https://arxiv.org/abs/2510.14231; Petzka et al. 2021,
    https://arxiv.org/abs/2001.00939 (see the module docstring). The attack is the core PGD
    (``eps``, ``norm``, ``steps``, ``step_size``, ``random_start``, ``seed``; it maximises
    ``loss_fn``) unless ``attack(x, y) -> x_adv`` is given. ``layer``: the ``nn.Linear`` producing
    the logits (default the last one). ``confident``: the probability above which a wrong
    prediction counts as confidently wrong. ``data``: images in [0, 1].
    """
    start = time.perf_counter()
    check_params(eps=eps, norm=norm, steps=steps, step_size=step_size, seed=seed, attack=attack, confident=confident,
                 loss_fn=loss_fn)
    loss_fn = resolve_loss(loss_fn)
    name, linear = find_layer(model, layer)
    device, dtype = model_device_dtype(model)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in KEYS}
    with preserved(model):
        for x, y in progress(Batches(data, unit_range=True).to(device, dtype), desc="feature displacement",
                             quiet=quiet):
            if attack is not None:
                x_adv = attack(x, y).detach()
            else:
                x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size,
                            random_start=random_start, seed=seed, loss_fn=loss_fn)
            with capture_features(linear) as box, torch.no_grad():
                z = check_logits(model(x), y)
                phi = box.take(z).detach()
                z_adv = check_logits(model(x_adv), y)
                phi_adv = box.take(z_adv).detach()
            _add(rows, phi, phi_adv, z, z_adv, y, linear, loss_fn)
    per = {k: torch.cat(v) for k, v in rows.items()}
    wrong = ~per["correct_adv"]
    flipped = per["correct_clean"] & wrong
    taylor_error = (per["taylor"] - per["loss_change"]).abs() / per["loss_change"].abs().clamp_min(1e-12)
    details = {
        "eps": float(eps),
        "norm": norm,
        "attack": "pgd" if attack is None else getattr(attack, "__name__", type(attack).__name__),
        "attack_settings": None if attack is not None else {
            "steps": steps, "step_size": 2.5 * float(eps) / steps if step_size is None else float(step_size),
            "random_start": bool(random_start), "seed": seed},
        "layer": name,
        "num_samples": int(per["displacement"].numel()),
        "median_displacement": _median(per["displacement"]),
        "mean_displacement": float(per["displacement"].mean()),
        "clean_accuracy": float(per["correct_clean"].double().mean()),
        "robust_accuracy": float(per["correct_adv"].double().mean()),
        "flipped": int(flipped.sum()),
        "wrong_adv": int(wrong.sum()),
        "confident": confident,
        "confident_wrong": int((wrong & (per["confidence"] > confident)).sum()),
        "median_confidence_wrong": _median(per["confidence"][wrong]),
        "median_kappa_clean": _median(per["kappa_clean"]),
        "median_kappa_adv": _median(per["kappa_adv"]),
        "median_kappa_clean_flipped": _median(per["kappa_clean"][flipped]),
        "median_kappa_adv_flipped": _median(per["kappa_adv"][flipped]),
        "median_loss_change": _median(per["loss_change"]),
        "median_taylor_relative_error": _median(taylor_error),
    }
    return Measurement(name="feature_displacement", value=_median(per["displacement"]),
                       per_sample=per["displacement"], details=details, seconds=time.perf_counter() - start,
                       artifacts={"per_sample": per})


def _add(rows, phi, phi_adv, z, z_adv, y, linear, loss_fn):
    """Append one batch's per-sample quantities, computed in float64 from the model's features and
    logits (a float32 loss difference or Taylor term of a small displacement cancels)."""
    phi, phi_adv, z, z_adv = (t.double() for t in (phi, phi_adv, z, z_adv))
    weight = linear.weight.detach().double()
    bias = None if linear.bias is None else linear.bias.detach().double()
    norm = phi.norm(dim=1)
    moved = (phi_adv - phi).norm(dim=1)
    # relative to ||phi||; a zero feature vector that moves has an infinite relative displacement
    displacement = torch.where(norm > 0, moved / norm.clamp_min(torch.finfo(norm.dtype).tiny),
                               torch.where(moved > 0, torch.full_like(moved, float("inf")), torch.zeros_like(moved)))
    rows["displacement"].append(displacement.cpu())
    loss = per_sample_loss(loss_fn, z, y).detach()
    loss_adv = per_sample_loss(loss_fn, z_adv, y).detach()
    rows["loss_clean"].append(loss.cpu())
    rows["loss_adv"].append(loss_adv.cpu())
    rows["loss_change"].append((loss_adv - loss).cpu())
    zz = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = per_sample_loss(loss_fn, zz, y)
        grad = torch.autograd.grad(out.sum(), zz)[0] if out.requires_grad else torch.zeros_like(zz)
    hess = logit_hessians(phi, weight, bias, y, loss_fn)
    hess_adv = logit_hessians(phi_adv, weight, bias, y, loss_fn)
    dz = F.linear(phi_adv - phi, weight)
    rows["taylor"].append(((grad * dz).sum(1) + 0.5 * torch.einsum("nk,nkl,nl->n", dz, hess, dz)).detach().cpu())
    kappa = pairwise_from_logit_hessians(phi, weight, bias, hess, loss_fn)
    kappa_adv = pairwise_from_logit_hessians(phi_adv, weight, bias, hess_adv, loss_fn)
    # a zero feature vector that moved: no bound (inf), where 0.5 * inf * kappa(=0) is nan
    term = torch.where(torch.isinf(displacement), torch.full_like(displacement, float("inf")),
                       0.5 * displacement.pow(2) * kappa)
    rows["flatness_term"].append(term.cpu())
    rows["kappa_clean"].append(kappa.cpu())
    rows["kappa_adv"].append(kappa_adv.cpu())
    rows["confidence"].append(torch.softmax(z_adv, 1).max(1).values.cpu())
    rows["correct_clean"].append((z.argmax(1) == y).cpu())
    rows["correct_adv"].append((z_adv.argmax(1) == y).cpu())


INFO = MeasureInfo(
    version="2",  # 2: per-sample kappa without float32 cancellation (cross-entropy)
    paper="Walter et al. 2025, When Flatness Does (Not) Guarantee Adversarial Robustness, "
          "https://arxiv.org/abs/2510.14231",
    follows_attack=("eps", "norm"),
    check=check_params,
)
