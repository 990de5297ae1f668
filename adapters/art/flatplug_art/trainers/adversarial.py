"""PGD adversarial training combined with one flatness method, as an ART trainer.

The combination, per ``flatness``:

* ``"none"``: PGD-AT (Madry et al. 2018) alone;
* ``"sam"`` / ``"asam"``: SAM's (ASAM's) ascent/descent step on the PGD examples' loss;
* ``"awp"``: adversarial weight perturbation on the PGD examples' loss (Wu et al. 2020; the core's ``awp``);
* ``"fam"``: cross-entropy on the PGD examples plus lambda times the relative flatness at them;
* ``"lfr"``: ``CE(x) + lam * LFR(x) + CE(x_adv)``, the core's LFR with ``adversarial=True`` (Xu et al. 2020).

In every case the PGD examples come from one inner maximiser: flatplug's PGD (``eps``,
``step_size``, ``steps``, ``random_start``, ``norm``, in the classifier's units) or ``attack``,
any ART ``EvasionAttack`` (it keeps its own settings; ``eps`` then defaults to the attack's) or a
callable ``attack(x, y)`` on [0, 1] tensors. The history's accuracy is on the adversarial batch
(on the clean batch for ``"lfr"``); ``validation_data`` adds clean and robust validation accuracy.
"""

from __future__ import annotations

import numpy as np

from flatplug.ext import check_choice
from flatplug.training import AWP, LFR, PGDAT

from .._build import check_lengths, resolve_layer
from ..attack import CorePGD, inner_attack
from ..methods import PGDATASAM, PGDATFAM, PGDATSAM
from .base import FlatTrainer

#: flatness -> the keyword arguments it takes (defaults are the core methods')
FLATNESS = {
    "none": (),
    "sam": ("rho", "eta"),
    "asam": ("rho", "eta"),
    "awp": ("gamma",),
    "fam": ("lam", "layer", "variant"),
    "lfr": ("lam", "q", "lfr_steps", "lfr_step_size"),
}


class FlatAdversarialTrainer(FlatTrainer):
    """PGD adversarial training whose update is made flat by ``flatness`` (see the module docstring)."""

    def __init__(self, classifier, flatness: str = "sam", *, eps: float | None = None,
                 step_size: float | None = None, steps: int = 10, random_start: bool = True, norm: str = "linf",
                 attack=None, **flatness_params) -> None:
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
        pgd_params = dict(eps=scaled["eps"], step_size=scaled["step_size"], steps=steps, random_start=random_start,
                          norm=norm, attack=custom)
        core_pgd = CorePGD(self._module, eps=scaled["eps"], norm=norm, steps=steps, step_size=scaled["step_size"],
                           random_start=random_start)
        p = flatness_params
        if flatness == "none":
            method = PGDAT(**pgd_params)
        elif flatness in ("sam", "asam"):
            cls = PGDATSAM if flatness == "sam" else PGDATASAM
            method = cls(**pgd_params, **p)
        elif flatness == "fam":
            method = PGDATFAM(**pgd_params, **{**p, "layer": resolve_layer(classifier, p.get("layer"))})
        elif flatness == "awp":
            method = AWP(**pgd_params, **p)
        else:  # lfr: its PGD term uses this trainer's inner maximiser
            method = LFR(eps=scaled["eps"], lam=p.get("lam", 1.0), q=p.get("q", 1), norm=norm,
                         steps=p.get("lfr_steps", 5), step_size=scaled["lfr_step_size"], adversarial=True,
                         pgd_steps=steps, attack=custom or core_pgd)
        self.flatness = flatness
        self._use(method)
        self._robust_attack = custom or core_pgd
