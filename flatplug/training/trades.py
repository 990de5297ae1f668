"""TRADES (Zhang et al. 2019, https://arxiv.org/abs/1901.08573): the KL robustness term and its inner maximiser.

The TRADES objective is ``CE(f(x), y) + beta * KL(p(x) || p(x'))``, ``p`` the softmax, where
``x'`` maximises the KL term inside the ``eps``-ball. As in the official code
(yaodongyu/TRADES, ``trades.py``; and csdongxian/AWP's TRADES-AWP), the maximiser runs with the
model in eval mode, starts at ``x + 0.001 * N(0, I)`` (the KL term and its gradient vanish at
``x`` itself) and takes sign-gradient steps on the summed KL for L-inf, normalised-gradient steps
for L2 (the official L2 variant takes the same steps through an SGD optimiser on ``delta``, of
``2 eps / steps`` against ``2.5 eps / steps`` here, clamps before it projects and replaces a zero
gradient by a random one). Every iterate is projected onto the ball and clipped to [0, 1]; the
start is clipped too (the official code does not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ascent_step, project
from .base import evaluating

#: the standard deviation of the official TRADES start around x
START_STD = 1e-3


def kl_per_sample(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(softmax(clean) || softmax(adv))``; differentiable in both."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="none").sum(1)


def trades_examples(model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, steps: int,
                    step_size: float | None) -> torch.Tensor:
    """The points of the ``eps``-ball that maximise ``KL(p(x) || p(x'))`` (TRADES' inner maximisation).

    Runs in eval mode (the model's mode is restored); the start draws from torch's global
    generator. ``step_size`` defaults to ``2.5 * eps / steps``. Parameter gradients are untouched.
    """
    x = x.detach()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    with evaluating(model):
        with torch.no_grad():
            p_clean = model(x)
        if eps == 0:
            return x.clone()
        noise = torch.randn(x.shape, dtype=x.dtype, device="cpu").to(x.device)
        delta = project(START_STD * noise, eps, norm)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                kl = kl_per_sample(p_clean, model(x + delta)).sum()
                (grad,) = torch.autograd.grad(kl, delta)
            delta = project(delta.detach() + ascent_step(grad, alpha, norm), eps, norm)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
