"""The interface every training method implements, and what one step reports."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn


@dataclass
class StepResult:
    """Loss (the method's full objective) and clean-batch logits for accuracy bookkeeping."""

    loss: float
    logits: torch.Tensor


class TrainingMethod:
    """One optimisation step of a training method.

    ``step`` computes gradients into ``.grad`` and calls ``optimizer.step()``; it must leave
    no weight perturbation behind and must call ``optimizer.zero_grad()`` itself. The loop
    puts the model in train mode before each step; methods that attack in eval mode restore it.
    ``needs_unit_inputs`` asks the loop to check images are in [0, 1] (methods that perturb inputs).
    """

    name = "base"
    needs_unit_inputs = False

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> StepResult:
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON-able hyper-parameters, recorded in the history."""
        return {k: v for k, v in vars(self).items() if isinstance(v, (int, float, str, bool, type(None)))}


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


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block (attacks, inner maximisation); its mode restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
