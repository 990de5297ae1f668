"""AWP (Wu et al. 2020): adversarial weight perturbation on top of PGD adversarial training.

After the PGD examples are made, one ascent step on their loss perturbs each weight tensor
by ``gamma * ||w_l|| * g_l / ||g_l||`` (layer-wise, relative to the layer's own norm; biases
and norm layers are left alone); the training gradient is taken there, the perturbation is
removed, and the optimizer steps.
"""

from __future__ import annotations

import torch

from .._validation import check_positive
from ._bn import frozen_bn_stats
from .base import StepResult, params_with_grad, perturbed
from .pgd_at import PGDAT


class AWP(PGDAT):
    name = "awp"

    def __init__(self, gamma: float = 5e-3, **pgd_params):
        super().__init__(**pgd_params)
        check_positive(gamma, "gamma", allow_zero=True)
        self.gamma = gamma

    def step(self, model, x, y, optimizer):
        x_adv = self.adversarial(model, x, y)
        weights = [p for p in params_with_grad(model) if p.dim() > 1]
        with frozen_bn_stats(model):
            ascent = self.objective(model(x_adv), y)
        grads = torch.autograd.grad(ascent, weights, allow_unused=True)
        with torch.no_grad():
            deltas = [
                torch.zeros_like(w) if g is None else self.gamma * w.norm() * g / g.norm().clamp_min(1e-12)
                for w, g in zip(weights, grads)
            ]
        optimizer.zero_grad(set_to_none=True)
        with perturbed(weights, deltas):
            logits = model(x_adv)
            loss = self.objective(logits, y)
            loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())
