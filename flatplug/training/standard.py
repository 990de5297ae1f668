"""Standard (empirical risk) training: the method's loss on clean inputs, cross-entropy by default.

No paper of its own: the baseline every other method is compared with.
"""

from __future__ import annotations

from .base import StepResult, TrainingMethod


class Standard(TrainingMethod):
    name = "standard"

    def step(self, model, x, y, optimizer):
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = self.objective(logits, y)
        loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())
