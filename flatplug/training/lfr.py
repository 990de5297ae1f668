"""LFR (Xu et al. 2020, "Adversarial Defense via Local Flatness Regularization").

Inner maximisation: the point x' of the eps-ball with the largest input-gradient norm (the
same maximiser as the ``local_flatness`` measure). Outer objective:
``CE(x) + lambda * mean_i ||grad_x' l(x'_i, y_i)||_q``, differentiated through the input
gradient (double backprop). ``adversarial=True`` adds CE on a PGD example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_positive
from ..attacks import NORMS
from ..measures.local_flatness import max_gradient_norm_point
from .base import StepResult, TrainingMethod, evaluating
from .pgd_at import adversarial_examples


def lfr_regularizer(model: nn.Module, x_lf: torch.Tensor, y: torch.Tensor, *, q: float = 1,
                    method: TrainingMethod | None = None) -> torch.Tensor:
    """``mean_i ||grad_x l(x_i, y_i)||_q`` at the given points, differentiable w.r.t. the weights.

    ``l`` is ``method.loss_fn`` (cross-entropy when None) and the per-sample norms are reduced as
    ``method``'s objective is (mean by default, sum for ``reduction="sum"``).
    """
    x_lf = x_lf.detach().requires_grad_(True)
    loss_fn = F.cross_entropy if method is None else method.loss_fn
    losses = loss_fn(model(x_lf), y, reduction="none") if method is None else loss_fn(model(x_lf), y)
    (g,) = torch.autograd.grad(losses.sum(), x_lf, create_graph=True)
    norms = g.flatten(1).norm(p=q, dim=1)
    return norms.mean() if method is None else method.reduce(norms)


class LFR(TrainingMethod):
    name = "lfr"
    needs_unit_inputs = True

    def __init__(self, eps: float = 8 / 255, lam: float = 0.05, q: float = 1, norm: str = "linf", steps: int = 5,
                 step_size: float | None = None, adversarial: bool = False, pgd_steps: int = 10, attack=None):
        check_positive(eps, "eps", allow_zero=True)
        check_positive(lam, "lam", allow_zero=True)
        check_choice(norm, "norm", NORMS)
        if q not in (1, 2, float("inf")):
            raise ValueError(f"q: expected 1, 2 or inf (the dual norm of the eps-ball is 1 for linf), got {q!r}")
        if steps < 1:
            raise ValueError(f"steps: expected at least 1 inner step, got {steps}")
        self.eps, self.lam, self.q, self.norm, self.steps, self.step_size = eps, lam, q, norm, steps, step_size
        self.adversarial, self.pgd_steps, self.attack = adversarial, pgd_steps, attack

    def step(self, model, x, y, optimizer):
        with evaluating(model):
            x_lf, _ = max_gradient_norm_point(model, x, y, eps=self.eps, norm=self.norm, q=self.q,
                                              steps=self.steps, step_size=self.step_size)
        x_adv = None
        if self.adversarial:
            x_adv = adversarial_examples(model, x, y, eps=self.eps, norm=self.norm, steps=self.pgd_steps,
                                         step_size=None, random_start=True, attack=self.attack)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = self.objective(logits, y) + self.lam * lfr_regularizer(model, x_lf, y, q=self.q, method=self)
        if x_adv is not None:
            loss = loss + self.objective(model(x_adv), y)
        loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())
