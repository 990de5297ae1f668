"""LFR (Xu et al. 2020, "Adversarial Defense via Local Flatness Regularization",
https://arxiv.org/abs/1910.12165) as an ART trainer."""

from __future__ import annotations

from flatplug.training import LFR

from .._build import check_lengths, given
from ..attack import CorePGD, inner_attack
from .base import FlatTrainer


class LFRTrainer(FlatTrainer):
    """Train ``classifier`` with the core's ``lfr`` method: ``loss(x) + lam * LF``, LF the local flatness at the
    steepest point of the eps-ball (the gradient norm's order ``q``; None: the dual norm of the ball, 1 for
    ``norm="linf"``, 2 for ``"l2"``).

    Only ``eps`` is required (in the classifier's input units; its ``clip_values`` are required).
    Every other argument left at None takes the core method's default (``flatplug.training.LFR``,
    lambda from the paper's official code), so the core and this trainer share one set of defaults.
    ``steps``/``step_size``: the inner ascent (double backprop). ``adversarial=True`` adds the loss
    on a PGD example (``pgd_steps`` steps of flatplug's PGD, or ``attack``: any ART ``EvasionAttack``,
    or a callable ``attack(x, y)`` on [0, 1] tensors); it is flatplug's extension, not the paper's
    objective. Validation reports robust accuracy under that attack (flatplug's PGD at ``eps``
    with the method's PGD steps by default).
    """

    def __init__(self, classifier, *, eps: float, lam: float | None = None, q: float | None = None,
                 norm: str | None = None, steps: int | None = None, step_size: float | None = None,
                 adversarial: bool | None = None, pgd_steps: int | None = None, attack=None) -> None:
        super().__init__(classifier)
        self._space.require("LFRTrainer")
        if attack is not None and not adversarial:
            raise ValueError("attack: only used for the PGD term of adversarial=True; pass adversarial=True or drop attack")
        check_lengths({"eps": eps, "step_size": step_size})
        scaled = self._space.scale_lengths({"eps": eps, "step_size": step_size})
        custom = inner_attack(attack, self._space, classifier.nb_classes)
        self._use(LFR(**given(eps=scaled["eps"], lam=lam, q=q, norm=norm, steps=steps, step_size=scaled["step_size"],
                              adversarial=adversarial, pgd_steps=pgd_steps, attack=custom)))
        m = self.method
        self._robust_attack = custom or CorePGD(self._module, eps=m.eps, norm=m.norm, steps=getattr(m, "pgd_steps", 10),
                                                step_size=None, random_start=True, loss_fn=m.loss_fn)
