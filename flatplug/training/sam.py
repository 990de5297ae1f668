"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021): ascend to the worst nearby weights, descend from there.

First pass: gradient g at w. Perturbation e = rho g / ||g|| (SAM) or
e = rho T^2 g / ||T g|| with T = |w| + eta (ASAM). Second pass at w + e (batch-norm
statistics not updated), then w is restored and the base optimizer steps with that gradient.
"""

from __future__ import annotations

import torch

from .._validation import check_positive
from ._bn import frozen_bn_stats
from .base import StepResult, TrainingMethod, params_with_grad, perturbed


class SAM(TrainingMethod):
    name = "sam"
    adaptive = False

    def __init__(self, rho: float = 0.05, eta: float = 0.01):
        check_positive(rho, "rho", allow_zero=True)
        check_positive(eta, "eta", allow_zero=True)
        self.rho, self.eta = rho, eta

    def perturbation(self, params, grads):
        if self.adaptive:
            scaled = [(p.abs() + self.eta) * g for p, g in zip(params, grads)]
            norm = torch.sqrt(sum((s * s).sum() for s in scaled)).clamp_min(1e-12)
            return [self.rho * (p.abs() + self.eta) * s / norm for p, s in zip(params, scaled)]
        norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
        return [self.rho * g / norm for g in grads]

    def step(self, model, x, y, optimizer):
        params = params_with_grad(model)
        logits = model(x)
        loss = self.objective(logits, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
        e = self.perturbation([p for p, _ in pairs], [g for _, g in pairs])
        optimizer.zero_grad(set_to_none=True)
        with perturbed([p for p, _ in pairs], e), frozen_bn_stats(model):
            self.objective(model(x), y).backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())


class ASAM(SAM):
    name = "asam"
    adaptive = True

    def __init__(self, rho: float = 0.5, eta: float = 0.01):
        super().__init__(rho=rho, eta=eta)
