"""Standard training: cross-entropy on clean inputs."""

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
