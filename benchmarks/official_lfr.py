"""The reference for LFR's speed goal: one training step of the official LFR algorithm, re-implemented.

Algorithm of Xu et al.'s official code (github.com/Uooga/Local-Flatness-Regularization,
``loss_function/LFR_loss.py``, function ``LFR_loss``), written here from its description, not
copied: in eval mode, start at ``x + N(0, 0.001^2)`` clipped to [0, 1]; ``steps`` times, take the
input gradient of the batch-mean cross-entropy with ``create_graph=True``, differentiate the mean
L1 norm of that gradient w.r.t. the input (double backprop), step by ``step_size`` times its
sign, project onto the L-inf ball and clip to [0, 1]. Then, in train mode:
``CE(x) + lam * B * mean_i ||grad_x' CE(x')_i||_1`` (the batch-mean loss's gradient rescaled by
the batch size ``B``), backward, optimizer step. The official training loop's extra forward pass
for accuracy bookkeeping is left out (it would only make the reference slower).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def official_lfr_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, *,
                      eps: float, steps: int, step_size: float, lam: float,
                      generator: torch.Generator | None = None) -> float:
    """One step of the official LFR algorithm (see the module docstring); returns the loss."""
    model.eval()
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    x_adv = (x.detach() + 0.001 * noise).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv, create_graph=True)
        l1 = grad.abs().flatten(1).sum(1).mean()
        (direction,) = torch.autograd.grad(l1, x_adv)
        x_adv = x_adv.detach() + step_size * direction.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    optimizer.zero_grad()
    loss_clean = F.cross_entropy(model(x), y)
    x_adv.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv, create_graph=True)
    regulariser = grad.abs().flatten(1).sum(1).mean() * x.shape[0]
    loss = loss_clean + lam * regulariser
    loss.backward()
    optimizer.step()
    return float(loss.detach())
