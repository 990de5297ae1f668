"""LFR (Xu et al. 2020, local flatness regularisation) as an ART trainer."""

from __future__ import annotations

from flatplug.training import LFR

from .._build import check_lengths
from ..attack import CorePGD, inner_attack
from .base import FlatTrainer


class LFRTrainer(FlatTrainer):
    """Train ``classifier`` with ``CE(x) + lam * mean ||grad_x' l(x', y)||_q``, ``x'`` the steepest point of the eps-ball.

    ``eps`` and ``step_size`` are in the classifier's input units (its ``clip_values`` range, which
    is required). ``steps``: the inner ascent's steps (double backprop). ``adversarial=True`` adds
    cross-entropy on a PGD example (``pgd_steps`` steps of flatplug's PGD, or ``attack``: any ART
    ``EvasionAttack``, or a callable ``attack(x, y)`` on [0, 1] tensors). Validation reports robust
    accuracy under that attack (flatplug's PGD at ``eps`` with ``pgd_steps`` steps by default).
    """

    def __init__(self, classifier, *, eps: float, lam: float = 1.0, q: float = 1, norm: str = "linf",
                 steps: int = 5, step_size: float | None = None, adversarial: bool = False, pgd_steps: int = 10,
                 attack=None) -> None:
        super().__init__(classifier)
        self._space.require("LFRTrainer")
        if attack is not None and not adversarial:
            raise ValueError("attack: only used for the PGD term of adversarial=True; pass adversarial=True or drop attack")
        check_lengths({"eps": eps, "step_size": step_size})
        scaled = self._space.scale_lengths({"eps": eps, "step_size": step_size})
        custom = inner_attack(attack, self._space, classifier.nb_classes)
        self._use(LFR(eps=scaled["eps"], lam=lam, q=q, norm=norm, steps=steps, step_size=scaled["step_size"],
                      adversarial=adversarial, pgd_steps=pgd_steps, attack=custom))
        self._robust_attack = custom or CorePGD(self._module, eps=scaled["eps"], norm=norm, steps=pgd_steps,
                                                step_size=None, random_start=True)
