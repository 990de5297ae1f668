"""Gradient masking, flagged: when flatness numbers describe masked gradients, not robustness.

A model *masks gradients* when gradient-based attacks fail for reasons other than robustness
(Athalye, Carlini and Wagner 2018, "Obfuscated gradients give a false sense of security").
Scoring checks every model with two rules and records the evidence in the ``details`` of its
attack rows, under ``"gradient_masking"`` (``flagged``, ``reasons`` and the numbers):

* **Vanishing gradients** (on the row of the run's first attack) -- on more than
  :data:`VANISHING_FRACTION` of the samples the input gradient of the cross-entropy loss is too
  small to move it: ``eps * ||grad_x L(x)||_* <= VANISHING_RATIO * L(x)`` with ``||.||_*`` the
  dual norm of the attack's ball (L1 for L-inf, L2 for L2, L-inf for L1): the first-order
  prediction of the loss change over the whole ball is below :data:`VANISHING_RATIO` of the loss
  itself (zero gradients, or a loss saturated to 0 in floating point, always count). The ratio
  does not depend on the model's confidence, so a confident but honest model is not flagged,
  while one that hides its gradients behind a hard, piecewise-constant or saturated output is.
* **Stronger attack** (on the row of every later attack at the same ``eps`` and norm) -- the
  first attack (typically PGD) leaves a robust accuracy that exceeds the later one's (AutoAttack,
  or PGD with restarts) by more than :data:`MASKING_MARGIN`, an absolute difference of accuracies
  on the same samples.

A model is flagged when any of its attack rows is (:func:`is_flagged`); the report marks it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: Flag when the first attack's robust accuracy exceeds a later attack's by more than this (absolute).
MASKING_MARGIN = 0.10
#: A sample's gradient "vanishes" when eps * ||grad||_dual <= VANISHING_RATIO * loss.
VANISHING_RATIO = 1e-3
#: Flag when gradients vanish on more than this fraction of the samples ("most samples").
VANISHING_FRACTION = 0.5
#: Version of these rules, recorded with every check.
MASKING_VERSION = "1"
KEY = "gradient_masking"

_DUAL = {"linf": 1.0, "l2": 2.0, "l1": math.inf}


def vanishing_gradients(model: nn.Module, batches, eps: float, norm: str) -> torch.Tensor:
    """Per sample, whether its input gradient vanishes by the rule above (bool ``[N]`` on the CPU).

    ``model`` must be in eval mode (each sample's gradient is then its own); a model whose output
    does not depend differentiably on its input (``argmax`` inside) has zero gradients everywhere.
    """
    p = _DUAL.get(norm)
    if p is None:
        raise ValueError(f"norm: the vanishing-gradient rule knows linf, l2 and l1 balls, got {norm!r}")
    out = []
    for x, y in batches:
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x).float(), y, reduction="none")
            grad = None
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        dual = grad.detach().flatten(1).float().norm(p=p, dim=1)
        out.append((eps * dual <= VANISHING_RATIO * loss.detach()).cpu())
    return torch.cat(out)


def vanishing_check(fraction: float) -> dict[str, Any]:
    """The first attack's evidence: the fraction of samples whose gradients vanish."""
    flagged = fraction > VANISHING_FRACTION
    reasons = [f"input gradients vanish on {fraction:.0%} of the samples (more than {VANISHING_FRACTION:.0%})"] \
        if flagged else []
    return {"flagged": flagged, "reasons": reasons, "rule": "vanishing gradients", "vanishing_fraction": fraction,
            "vanishing_limit": VANISHING_FRACTION, "vanishing_ratio": VANISHING_RATIO, "version": MASKING_VERSION}


def comparison_check(first: str, first_accuracy: float, label: str, accuracy: float) -> dict[str, Any]:
    """A later attack's evidence: how far the first attack's robust accuracy exceeds its own."""
    gap = first_accuracy - accuracy
    flagged = gap > MASKING_MARGIN
    reasons = [f"{first} leaves robust accuracy {first_accuracy:.3f} but {label} only {accuracy:.3f} "
               f"(gap {gap:.3f} > {MASKING_MARGIN})"] if flagged else []
    return {"flagged": flagged, "reasons": reasons, "rule": "stronger attack", "compared_with": first,
            "first_robust_accuracy": first_accuracy, "gap": gap, "margin": MASKING_MARGIN, "version": MASKING_VERSION}


def same_threat(a: dict[str, Any], b: dict[str, Any], norm_of) -> bool:
    """Whether two attack specs search the same ball (same eps and norm)."""
    ea, eb = a.get("eps"), b.get("eps")
    return (ea is not None and eb is not None and math.isclose(float(ea), float(eb), rel_tol=1e-9, abs_tol=1e-12)
            and norm_of(a) == norm_of(b))


def checks_of(details: Iterable[Any]) -> list[dict[str, Any]]:
    """The gradient-masking evidence found in rows' details."""
    return [d[KEY] for d in details if isinstance(d, dict) and isinstance(d.get(KEY), dict)]


def is_flagged(details: Iterable[Any]) -> bool:
    """Whether any of a model's attack rows flags gradient masking."""
    return any(c.get("flagged") for c in checks_of(details))
