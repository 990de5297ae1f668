"""AWP (Wu et al. 2020, "Adversarial Weight Perturbation Helps Robust Generalization",
https://arxiv.org/abs/2004.05884) on PGD-AT or TRADES (https://arxiv.org/abs/1901.08573), as an ART trainer."""

from __future__ import annotations

from .._build import given
from .adversarial import FlatAdversarialTrainer


class AWPTrainer(FlatAdversarialTrainer):
    """Adversarial training with a layer-wise weight perturbation of relative size ``gamma`` (the core's ``awp``).

    What ART's ``AdversarialTrainerAWPPyTorch`` offers, without its proxy classifier: ``mode``
    ``"pgd"`` (AT-AWP: the loss on the adversarial examples) or ``"trades"`` (TRADES-AWP:
    ``loss(x) + beta * KL(p(x) || p(x_adv))``), ``warmup`` epochs without weight perturbation, any
    torch LR scheduler, ART's ``fit``/``fit_generator`` arguments. ``eps``, ``step_size``, ``steps``,
    ``random_start``, ``norm``: flatplug's inner maximiser (PGD on the loss, or TRADES' KL
    maximiser in ``"trades"`` mode), in the classifier's input units; or ``attack``, an ART
    ``EvasionAttack`` (as ART's trainer takes) or a callable on [0, 1] tensors, used in both modes.
    Arguments left at None take the core method's defaults (``flatplug.training.AWP``: gamma 5e-3,
    the paper's, where ART's default is 0.01; mode "pgd", beta 6, warmup 0). Given the same attack,
    data order and a plain-SGD proxy, the updates are ART's, under a mean or a sum loss (tested).
    """

    def __init__(self, classifier, *, eps: float | None = None, gamma: float | None = None,
                 mode: str | None = None, beta: float | None = None, warmup: int | None = None,
                 step_size: float | None = None, steps: int | None = None, random_start: bool | None = None,
                 norm: str | None = None, attack=None) -> None:
        super().__init__(classifier, "awp", eps=eps, step_size=step_size, steps=steps, random_start=random_start,
                         norm=norm, attack=attack, **given(gamma=gamma, mode=mode, beta=beta, warmup=warmup))
