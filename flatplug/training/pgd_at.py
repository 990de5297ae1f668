"""PGD adversarial training (Madry et al. 2018, https://arxiv.org/abs/1706.06083): the loss on PGD examples.

Inner maximisation: ``steps`` steps of projected gradient ascent on the method's per-sample loss
(``loss_fn``, cross-entropy by default) inside the ``eps``-ball of ``norm``, from a random start,
run with the model in eval mode (its mode is restored after), as MadryLab's ``robustness`` library
and TRADES' code do; Madry et al.'s original TensorFlow code and Rice et al.'s / AT-AWP's PyTorch
code attack in train mode, so their batch-norm statistics also see the attack's iterates (on a
batch-norm network the weights then differ from these by about 5e-2 after two batches in an
audit; identical without batch norm). Outer minimisation: the method's objective on those
examples, with the model in train mode.
"""

from __future__ import annotations

from .._loss import LossFn
from .._validation import check_choice, check_positive
from ..attacks import NORMS, pgd
from .base import StepResult, TrainingMethod, evaluating


def adversarial_examples(model, x, y, *, eps, norm, steps, step_size, random_start, attack=None,
                         loss_fn: LossFn | None = None):
    """PGD on ``loss_fn`` (or a user ``attack(x, y)``) generated in eval mode; the model's mode is restored.

    Random starts draw from torch's global generator, as a training loop expects.
    """
    with evaluating(model):
        if attack is not None:
            return attack(x, y).detach()
        return pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=random_start,
                   seed=None, loss_fn=loss_fn)


class PGDAT(TrainingMethod):
    """Madry et al.'s adversarial training; ``attack(x, y) -> x_adv`` replaces the built-in PGD when given."""

    name = "pgd-at"
    paper = "Madry et al. 2018, https://arxiv.org/abs/1706.06083"
    needs_unit_inputs = True

    def __init__(self, eps: float = 8 / 255, step_size: float | None = None, steps: int = 10,
                 random_start: bool = True, norm: str = "linf", attack=None):
        check_positive(eps, "eps", allow_zero=True)
        check_choice(norm, "norm", NORMS)
        if steps < 1:
            raise ValueError(f"steps: expected at least 1 PGD step, got {steps}")
        self.eps, self.step_size, self.steps, self.random_start, self.norm = eps, step_size, steps, random_start, norm
        self.attack = attack

    def adversarial(self, model, x, y):
        return adversarial_examples(model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                                    step_size=self.step_size, random_start=self.random_start, attack=self.attack,
                                    loss_fn=self.loss_fn)

    def step(self, model, x, y, optimizer):
        x_adv = self.adversarial(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x_adv)
        loss = self.objective(logits, y)
        loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())  # accuracy on the adversarial batch
