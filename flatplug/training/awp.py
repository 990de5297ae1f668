"""AWP (Wu et al. 2020, "Adversarial Weight Perturbation Helps Robust Generalization",
https://arxiv.org/abs/2004.05884): a worst-case weight perturbation on top of adversarial training.

Per batch: adversarial examples are made (PGD on the loss for ``mode="pgd"``, the TRADES KL
maximiser for ``mode="trades"``, or ``attack``), then one ascent step on the adversarial
objective perturbs each weight tensor by ``gamma * ||w_l|| * g_l / ||g_l||`` (layer-wise,
relative to the layer's own norm; 1-D parameters such as biases and norm layers are left
alone), the training gradient is taken at the perturbed weights, the perturbation is removed,
and the optimizer steps. This is the official code's (csdongxian/AWP) and ART's
``AdversarialTrainerAWPPyTorch``'s update without their proxy model: with a plain SGD proxy their
``proxy - w`` is ``lr * g``, so the normalised difference is the normalised gradient used here.
The ascent runs in train mode with batch-norm statistics frozen (the proxy's own statistics
never reach the model there either). Two departures from the official code: the perturbation is
removed *before* the optimizer steps (the official code steps on the perturbed weights and
removes it after, which differs only through weight decay: 3e-6 in the weights after two batches
with weight decay 5e-4 and momentum 0.9), and the attack runs in eval mode (the official AT-AWP
attacks in train mode; see :mod:`flatplug.training.pgd_at`).

Objectives (``reduce`` is the method's reduction, mean by default):

* ``mode="pgd"`` (AT-AWP): ``reduce(l(f(x_adv), y))``;
* ``mode="trades"`` (TRADES-AWP): ``reduce(l(f(x), y)) + beta * mean_i KL(p(x_i) || p(x_adv_i))``,
  ``l`` the method's loss (cross-entropy by default), computed as clean then adversarial forward
  pass. The KL term is the batch mean whatever ``reduce`` is, as in TRADES' code and ART's
  ``AdversarialTrainerAWPPyTorch`` (``(1 / n) * KLDivLoss(reduction="sum")``).

``warmup``: the first ``warmup`` epochs of a ``train`` call run without weight perturbation
(plain PGD-AT / TRADES), as ART's and the official ``--awp-warmup``. ``gamma`` defaults to the
paper's 5e-3 (the official TRADES-AWP default; the official AT-AWP script uses 1e-2).
"""

from __future__ import annotations

import torch

from .._validation import check_choice, check_positive
from ._bn import frozen_bn_stats
from .base import StepResult, params_with_grad, perturbed
from .pgd_at import PGDAT
from .trades import kl_per_sample, trades_examples

MODES = ("pgd", "trades")


class AWP(PGDAT):
    """Adversarial weight perturbation of relative size ``gamma`` on PGD-AT (``mode="pgd"``) or TRADES."""

    name = "awp"
    paper = "Wu et al. 2020, https://arxiv.org/abs/2004.05884"

    def __init__(self, gamma: float = 5e-3, mode: str = "pgd", beta: float = 6.0, warmup: int = 0, **pgd_params):
        super().__init__(**pgd_params)
        check_positive(gamma, "gamma", allow_zero=True)
        check_positive(beta, "beta", allow_zero=True)
        mode = mode.lower() if isinstance(mode, str) else mode
        check_choice(mode, "mode", MODES)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup: expected a non-negative whole number of epochs, got {warmup!r}")
        self.gamma, self.mode, self.beta, self.warmup = gamma, mode, beta, warmup
        self._epoch = 0

    def begin_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    @property
    def perturbing(self) -> bool:
        """Whether this epoch perturbs the weights (past the warm-up, and ``gamma > 0``)."""
        return self._epoch >= self.warmup and self.gamma > 0

    def adversarial(self, model, x, y):
        if self.mode == "trades" and self.attack is None:
            return trades_examples(model, x, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size)
        return super().adversarial(model, x, y)

    def adversarial_objective(self, model, x, x_adv, y) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, adversarial logits)`` of ``mode`` at the current weights."""
        if self.mode == "trades":
            logits = model(x)
            logits_adv = model(x_adv)
            loss = self.objective(logits, y) + self.beta * kl_per_sample(logits, logits_adv).mean()
            return loss, logits_adv
        logits_adv = model(x_adv)
        return self.objective(logits_adv, y), logits_adv

    def weight_perturbation(self, model, x, x_adv, y) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The weight tensors AWP perturbs and ``gamma * ||w_l|| * g_l / ||g_l||`` for each."""
        weights = [p for p in params_with_grad(model) if p.dim() > 1]
        with frozen_bn_stats(model):
            ascent, _ = self.adversarial_objective(model, x, x_adv, y)
        grads = torch.autograd.grad(ascent, weights, allow_unused=True)
        with torch.no_grad():
            deltas = [
                torch.zeros_like(w) if g is None else self.gamma * w.norm() * g / g.norm().clamp_min(1e-12)
                for w, g in zip(weights, grads)
            ]
        return weights, deltas

    def step(self, model, x, y, optimizer):
        x_adv = self.adversarial(model, x, y)
        weights, deltas = self.weight_perturbation(model, x, x_adv, y) if self.perturbing else ([], [])
        optimizer.zero_grad(set_to_none=True)
        with perturbed(weights, deltas):
            loss, logits_adv = self.adversarial_objective(model, x, x_adv, y)
            loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits_adv.detach())  # accuracy on the adversarial batch
