"""SAM and ASAM: ascend to the worst nearby weights, descend from there.

SAM: Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization",
https://arxiv.org/abs/2010.01412. ASAM: Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware
Minimization for Scale-Invariant Learning of Deep Neural Networks", https://arxiv.org/abs/2102.11600.

First pass: gradient g of the objective at w. Perturbation e = rho g / ||g||_2 over all trained
parameters (SAM) or e = rho T^2 g / ||T g|| (ASAM; one norm over all trained parameters). As in
the official ASAM code (github.com/SamsungLabs/ASAM, ``asam.py``), T = |w| + eta element-wise
(``eta`` 0.01) only for parameters whose name contains "weight"; for the others (biases) T is the
identity, so their e is the plain SAM direction rho g / ||T g||. Second pass at w + e
(batch-norm statistics not updated), then w is restored and the base optimizer steps with that
gradient (m = the whole batch). Weight decay stays in the base optimizer, as in davda54/sam, whose
update this reproduces to float64 rounding; Google's JAX code puts it in the loss, so it also
enters the perturbation, and adds no epsilon to the norm.
"""

from __future__ import annotations

import torch

from .._validation import check_positive
from ._bn import frozen_bn_stats
from .base import StepResult, TrainingMethod, perturbed


class SAM(TrainingMethod):
    """Sharpness-aware minimisation with radius ``rho`` (0.05, the paper's CIFAR-10 value)."""

    name = "sam"
    paper = "Foret et al. 2021, https://arxiv.org/abs/2010.01412"
    adaptive = False

    def __init__(self, rho: float = 0.05, eta: float = 0.01):
        check_positive(rho, "rho", allow_zero=True)
        check_positive(eta, "eta", allow_zero=True)
        self.rho, self.eta = rho, eta

    def perturbation(self, params, grads, names):
        """``e`` for ``params`` (named ``names``) with gradients ``grads``; ASAM scales the ``*weight*`` ones."""
        if self.adaptive:
            scale = [p.abs() + self.eta if "weight" in n else None for n, p in zip(names, params)]
            tg = [g if t is None else t * g for t, g in zip(scale, grads)]
            norm = torch.sqrt(sum((v * v).sum() for v in tg)).clamp_min(1e-12)
            return [self.rho * (v if t is None else t * v) / norm for t, v in zip(scale, tg)]
        norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
        return [self.rho * g / norm for g in grads]

    def step(self, model, x, y, optimizer):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        logits = model(x)
        loss = self.objective(logits, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
        names = [n for (n, _), g in zip(named, grads) if g is not None]
        e = self.perturbation([p for p, _ in pairs], [g for _, g in pairs], names)
        optimizer.zero_grad(set_to_none=True)
        with perturbed([p for p, _ in pairs], e), frozen_bn_stats(model):
            self.objective(model(x), y).backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())


class ASAM(SAM):
    """Adaptive SAM with radius ``rho`` (0.5, the paper's CIFAR-10 value for SGD) and offset ``eta``."""

    name = "asam"
    paper = "Kwon et al. 2021, https://arxiv.org/abs/2102.11600"
    adaptive = True
    #: 2: T = |w| + eta only for parameters named "weight" (biases: T = identity), as the official code
    version = "2"

    def __init__(self, rho: float = 0.5, eta: float = 0.01):
        super().__init__(rho=rho, eta=eta)
