"""PGD adversarial training combined with one flatness method, as an ART trainer.

The combination, per ``flatness``:

* ``"none"``: PGD-AT (Madry et al. 2018, https://arxiv.org/abs/1706.06083) alone;
* ``"sam"`` / ``"asam"``: SAM's (https://arxiv.org/abs/2010.01412) / ASAM's
  (https://arxiv.org/abs/2102.11600) ascent/descent step on the PGD examples' loss;
* ``"awp"``: adversarial weight perturbation (Wu et al. 2020, https://arxiv.org/abs/2004.05884; the
  core's ``awp``, also in TRADES mode);
* ``"fam"``: the loss on the PGD examples plus lambda times the relative flatness at them
  (Adilova et al. 2023, https://arxiv.org/abs/2307.02337);
* ``"lfr"``: ``loss(x) + lam * LFR(x) + loss(x_adv)``, the core's LFR with ``adversarial=True``
  (Xu et al. 2020, https://arxiv.org/abs/1910.12165; the PGD term is flatplug's extension).

In every case the PGD examples come from one inner maximiser: flatplug's PGD (``eps``,
``step_size``, ``steps``, ``random_start``, ``norm``, in the classifier's units) or ``attack``,
any ART ``EvasionAttack`` (it keeps its own settings; ``eps`` then defaults to the attack's) or a
callable ``attack(x, y)`` on [0, 1] tensors. Arguments left at None take the core methods'
defaults. The history's accuracy is on the adversarial batch (on the clean batch for ``"lfr"``);
``validation_data`` adds clean and robust validation accuracy.
"""

from __future__ import annotations

import numpy as np

from flatplug.ext import check_choice
from flatplug.training import AWP, LFR, PGDAT

from .._build import check_lengths, given, resolve_layer
from ..attack import CorePGD, inner_attack
from ..methods import PGDATASAM, PGDATFAM, PGDATSAM
from .base import FlatTrainer

#: flatness -> the keyword arguments it takes (defaults are the core methods')
FLATNESS = {
    "none": (),
    "sam": ("rho", "eta"),
    "asam": ("rho", "eta"),
    "awp": ("gamma", "mode", "beta", "warmup"),
    "fam": ("lam", "layer", "variant"),
    "lfr": ("lam", "q", "lfr_steps", "lfr_step_size"),
}


class FlatAdversarialTrainer(FlatTrainer):
    """PGD adversarial training whose update is made flat by ``flatness`` (see the module docstring)."""

    def __init__(self, classifier, flatness: str = "sam", *, eps: float | None = None,
                 step_size: float | None = None, steps: int | None = None, random_start: bool | None = None,
                 norm: str | None = None, attack=None, **flatness_params) -> None:
        super().__init__(classifier)
        name = type(self).__name__
        check_choice(flatness, "flatness", tuple(FLATNESS))
        unknown = sorted(set(flatness_params) - set(FLATNESS[flatness]))
        if unknown:
            takes = ", ".join(FLATNESS[flatness]) or "no extra arguments"
            raise TypeError(f"{name}: flatness={flatness!r} takes {takes}; got unexpected {unknown}")
        self._space.require(name)
        if eps is None:  # an ART attack's own radius (for the record, and LFR's ball)
            eps = getattr(attack, "eps", None) if attack is not None else None
            if isinstance(eps, (np.floating, np.integer)) or (isinstance(eps, np.ndarray) and eps.size == 1):
                eps = float(eps)
            if not isinstance(eps, (int, float)) or isinstance(eps, bool):
                raise ValueError(f"{name}: eps is required (the PGD radius in the classifier's input units) "
                                 "unless attack= is an ART attack with a scalar eps")
        lengths = {"eps": eps, "step_size": step_size, "lfr_step_size": flatness_params.get("lfr_step_size")}
        check_lengths(lengths)
        scaled = self._space.scale_lengths(lengths)
        custom = inner_attack(attack, self._space, classifier.nb_classes)
        pgd_params = given(eps=scaled["eps"], step_size=scaled["step_size"], steps=steps, random_start=random_start,
                           norm=norm, attack=custom)
        p = given(**flatness_params)
        if flatness == "none":
            method = PGDAT(**pgd_params)
        elif flatness in ("sam", "asam"):
            cls = PGDATSAM if flatness == "sam" else PGDATASAM
            method = cls(**pgd_params, **p)
        elif flatness == "fam":
            method = PGDATFAM(**pgd_params, **{**p, **given(layer=resolve_layer(classifier, p.get("layer")))})
        elif flatness == "awp":
            method = AWP(**pgd_params, **p)
        else:  # lfr: its PGD term uses this trainer's inner maximiser (flatplug's PGD unless attack= is given)
            lfr = given(lam=p.get("lam"), q=p.get("q"), steps=p.get("lfr_steps"), step_size=scaled["lfr_step_size"])
            method = LFR(eps=scaled["eps"], **given(norm=norm, pgd_steps=steps), adversarial=True, attack=custom,
                         **lfr)
        self.flatness = flatness
        self._use(method)
        pgd_method = getattr(self.method, "pgd", self.method)  # the combined methods keep theirs in .pgd
        if isinstance(method, LFR):
            core = CorePGD(self._module, eps=method.eps, norm=method.norm, steps=getattr(method, "pgd_steps", 10),
                           step_size=scaled["step_size"], random_start=True if random_start is None else random_start,
                           loss_fn=method.loss_fn)
            if custom is None and (step_size is not None or random_start is not None):
                method.attack = core  # the PGD term with this trainer's step size / random start
            self._robust_attack = custom or core
        else:
            self._robust_attack = custom or CorePGD.like(self._module, pgd_method)
