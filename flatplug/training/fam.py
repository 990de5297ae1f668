"""FAM (Adilova et al. 2023, "FAM: Relative Flatness Aware Minimization", https://arxiv.org/abs/2307.02337):
the loss plus lambda times the relative flatness (Petzka et al. 2021, https://arxiv.org/abs/2001.00939)
of the penultimate layer.

Uses the differentiable closed form of :mod:`flatplug.measures.relative_flatness`, so the
regulariser costs one forward pass (features captured by a hook) and no Hessian. Two differences
from the official FAM code (``FAMloss.py``), both deliberate: its regulariser divides each block
trace by the feature dimension ``d`` (its ``lam`` acts as ``lam / d`` here), and it copies the
Hessian out of the graph, so its gradient flows through the weights only; here the gradient of
kappa itself flows, through the softmax probabilities and the features too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_positive
from ..features import capture_features, find_layer
from ..measures.relative_flatness import VARIANTS, closed_form
from .base import StepResult, TrainingMethod


def fam_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, layer=None, variant: str = "pairwise",
                  method: TrainingMethod | None = None):
    """``(loss, relative flatness, logits)`` from one forward pass, all differentiable.

    ``loss`` is ``method``'s objective (mean cross-entropy when None) and the relative flatness is
    reduced the same way (mean, or sum for ``reduction="sum"``).
    """
    _, linear = find_layer(model, layer)
    with capture_features(linear) as box:
        logits = model(x)
    per_sample = closed_form(box.phi.flatten(1), linear.weight, linear.bias, variant=variant)
    if method is None:
        return F.cross_entropy(logits, y), per_sample.mean(), logits
    return method.objective(logits, y), method.reduce(per_sample), logits


class FAM(TrainingMethod):
    """Relative-flatness-aware minimisation: ``objective + lam * reduce(kappa)`` of ``layer``."""

    name = "fam"
    paper = "Adilova et al. 2023, https://arxiv.org/abs/2307.02337"

    def __init__(self, lam: float = 0.01, layer=None, variant: str = "pairwise"):
        check_positive(lam, "lam", allow_zero=True)
        check_choice(variant, "variant", VARIANTS)
        self.lam, self.layer, self.variant = lam, layer, variant

    def step(self, model, x, y, optimizer):
        optimizer.zero_grad(set_to_none=True)
        ce, reg, logits = fam_objective(model, x, y, layer=self.layer, variant=self.variant, method=self)
        loss = ce + self.lam * reg
        loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())
