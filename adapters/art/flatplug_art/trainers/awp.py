"""AWP (Wu et al. 2020): adversarial weight perturbation on top of PGD adversarial training, as an ART trainer."""

from __future__ import annotations

from .adversarial import FlatAdversarialTrainer


class AWPTrainer(FlatAdversarialTrainer):
    """PGD-AT with a layer-wise weight perturbation of relative size ``gamma`` (``FlatAdversarialTrainer(flatness="awp")``).

    Unlike ART's ``AdversarialTrainerAWPPyTorch`` it needs no proxy classifier and accepts any torch
    LR scheduler. ``eps``, ``step_size``: the inner PGD, in the classifier's input units; or ``attack``.
    """

    def __init__(self, classifier, *, eps: float | None = None, gamma: float = 5e-3, step_size: float | None = None,
                 steps: int = 10, random_start: bool = True, norm: str = "linf", attack=None) -> None:
        super().__init__(classifier, "awp", eps=eps, step_size=step_size, steps=steps, random_start=random_start,
                         norm=norm, attack=attack, gamma=gamma)
