"""The interface every training method implements, and what one step reports.

No paper of its own: each method cites its own in ``paper`` and its module docstring (PGD-AT:
Madry et al. 2018, https://arxiv.org/abs/1706.06083; SAM: https://arxiv.org/abs/2010.01412;
ASAM: https://arxiv.org/abs/2102.11600; AWP: https://arxiv.org/abs/2004.05884; FAM:
https://arxiv.org/abs/2307.02337; LFR: https://arxiv.org/abs/1910.12165).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .._loss import LossFn, cross_entropy, per_sample_loss, resolve_loss
from .._state import eval_mode


@dataclass
class StepResult:
    """Loss (the method's full objective) and clean-batch logits for accuracy bookkeeping."""

    loss: float
    logits: torch.Tensor


REDUCTIONS = ("mean", "sum")


class TrainingMethod:
    """One optimisation step of a training method.

    ``step`` computes gradients into ``.grad`` and calls ``optimizer.step()``; it must leave
    no weight perturbation behind and must call ``optimizer.zero_grad()`` itself. The loop
    puts the model in train mode before each step (``train(training_mode=False)``: eval mode);
    methods that attack in eval mode restore the mode they found. The loop calls
    :meth:`begin_epoch` before each epoch (AWP's warm-up counts epochs with it).
    ``needs_unit_inputs`` asks the loop to check images are in [0, 1] (methods that perturb inputs).

    The loss trained is :meth:`objective`: ``loss_fn(logits, y)`` (per-sample losses, default
    softmax cross-entropy) reduced by ``reduction`` (``"mean"`` or ``"sum"``, as torch losses do).
    :meth:`set_loss` changes both, so a user's loss (e.g. ART's ``CrossEntropyLoss(reduction="sum")``)
    is the loss every method trains, including the terms inside its regularisers.
    """

    name = "base"
    #: implementation version (bump when the method's training changes: cached models retrain)
    version = "1"
    #: the reference the method implements
    paper = ""
    needs_unit_inputs = False
    loss_fn: LossFn = staticmethod(cross_entropy)  # type: ignore[assignment]
    reduction: str = "mean"

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> StepResult:
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Called by the loop before epoch ``epoch`` (0-based) of a ``train`` call; no-op by default."""

    def set_loss(self, loss_fn: LossFn | None = None, reduction: str = "mean") -> "TrainingMethod":
        """Train ``reduction``-reduced ``loss_fn(logits, y)`` (per-sample losses; None: cross-entropy)."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        self.loss_fn = resolve_loss(loss_fn)
        self.reduction = reduction
        return self

    def reduce(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-sample values reduced as the objective is (mean or sum over the batch)."""
        return losses.sum() if self.reduction == "sum" else losses.mean()

    def objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss trained on one batch: ``reduce(loss_fn(logits, y))``."""
        return self.reduce(per_sample_loss(self.loss_fn, logits, y))

    def settings(self) -> dict:
        """JSON-able public hyper-parameters, recorded in the history (and the objective's reduction)."""
        out = {k: v for k, v in vars(self).items()
               if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}
        out.setdefault("reduction", self.reduction)
        return out


def params_with_grad(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def perturbed(params: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Weights moved by ``deltas`` inside the block and restored bit for bit afterwards."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, deltas):
            p.add_(d)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


#: the model in eval mode inside the block (attacks, inner maximisation), each submodule's mode restored after
evaluating = eval_mode
