"""AutoAttack with the original's settings, built from torchattacks' member attacks.

The original AutoAttack (Croce & Hein 2020, https://github.com/fra31/auto-attack, the evaluation
RobustBench runs) is a per-image ensemble: starting from the correctly classified images, each
attack runs only on the images no earlier attack has broken, and an image counts as robust only
if every attack fails on it. Its members run 100 iterations. torchattacks 3.5's ``AutoAttack``
builds the same members with torchattacks' defaults (10 iterations for APGD, APGD-T and FAB, a
rescaled Square schedule) and runs every member on the clean-misclassified images too, so it is a
weaker evaluation; it stays available unchanged as ``torchattacks.AutoAttack`` (and as the
registered ``autoattack_torchattacks``).

Settings per version, as the original's ``AutoAttack._set_version`` and constructor give them
(``Linf`` and ``L2``; torchattacks' members implement no ``L1``):

============  ==========================================================================
standard      apgd-ce (100 iter, 1 restart), apgd-t (100 iter, 9 target classes, 1 restart),
              fab-t (100 iter, 9 target classes, 1 restart), square (5000 queries, p_init 0.8)
plus          apgd-ce and apgd-dlr (5 restarts each), fab (5 restarts), square, apgd-t, fab-t
rand          apgd-ce and apgd-dlr, 1 restart, 20 EOT samples per gradient
custom        ``attacks_to_run`` with the original's constructor settings: apgd-ce/apgd-dlr
              5 restarts, apgd-t 1 restart x 9 targets, fab 5 restarts, fab-t 1 restart x 9
              targets, square 5000 queries. As in the original, once fab-t has run, a later
              fab keeps fab-t's single restart (the original sets ``fab.n_restarts = 1``).
============  ==========================================================================

Every member uses ``rho=0.75``, ``eot_iter=1`` (20 for ``rand``), FAB ``alpha_max=0.1, eta=1.05,
beta=0.9``, Square the margin loss and no schedule rescaling (``resc_schedule=False``). The number
of target classes is 9, or ``K - 1`` for a model with ``K < 10`` classes (the original needs
``K >= 10``). The cheaper CPU evaluation "AA-lite" is ``version="custom",
attacks_to_run=["apgd-ce", "apgd-t"]``: the same per-image ensemble, without FAB-T and Square.

This is a torchattacks ``Attack``: ``set_model_training_mode``, ``set_normalization_used`` and
``set_device`` reach every member, ``attack(images, labels)`` returns adversarial images (an
image no attack broke, or that was misclassified to begin with, is returned unchanged).
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torchattacks import APGD, APGDT, FAB, Square
from torchattacks.attack import Attack

from ._options import check_radius, torchattacks_norm

#: the attacks the original knows, in its spelling
ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
VERSIONS = ("standard", "plus", "rand", "custom")
#: the attacks each version runs, in order (the original's ``_set_version``)
VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
N_ITER = 100
N_TARGET_CLASSES = 9
N_QUERIES = 5000
P_INIT = 0.8


def version_settings(version: str, attacks_to_run: Sequence[str] | None = None,
                     n_iter: int | None = None, n_restarts: int | None = None) -> list[tuple[str, dict]]:
    """``[(attack, settings)]`` the original runs for ``version``: ``n_iter``/``n_queries``,
    ``n_restarts``, ``n_target_classes`` (targeted attacks), ``eot_iter`` (APGD), ``p_init`` (Square).
    ``n_iter``: the iterations of APGD and FAB (``None``: the original's 100), as setting the
    original's ``adversary.apgd.n_iter`` does; Square's queries stay 5000. ``n_restarts``: the
    restarts of the untargeted APGD and FAB (``None``: the version's), as ``adversary.apgd.n_restarts``."""
    if n_iter is None:
        n_iter = N_ITER
    elif isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter: expected a positive integer (None: the original's {N_ITER}), got {n_iter!r}")
    if n_restarts is not None and (isinstance(n_restarts, bool) or not isinstance(n_restarts, int) or n_restarts < 1):
        raise ValueError(f"n_restarts: expected a positive integer (None: the version's), got {n_restarts!r}")
    if version not in VERSIONS:
        raise ValueError(f"version: expected one of {', '.join(VERSIONS)}, got {version!r}")
    if version == "custom":
        if attacks_to_run is None or isinstance(attacks_to_run, str) or not list(attacks_to_run):
            raise ValueError("attacks_to_run: version='custom' needs a non-empty list of attacks, e.g. "
                             f"['apgd-ce', 'apgd-t'] (AA-lite); known: {', '.join(ATTACKS)}")
        names = tuple(attacks_to_run)
        unknown = [a for a in names if a not in ATTACKS]
        if unknown:
            raise ValueError(f"attacks_to_run: unknown {', '.join(map(repr, unknown))}; known: {', '.join(ATTACKS)}")
        apgd_restarts, fab_restarts, eot_iter = 5, 5, 1  # the original's constructor
    else:
        if attacks_to_run is not None:
            raise ValueError(f"attacks_to_run: version={version!r} runs {list(VERSION_ATTACKS[version])}; "
                             "pass version='custom' to choose the attacks")
        names = VERSION_ATTACKS[version]
        apgd_restarts = {"standard": 1, "plus": 5, "rand": 1}[version]
        fab_restarts = {"standard": 1, "plus": 5, "rand": 5}[version]
        eot_iter = 20 if version == "rand" else 1
    if n_restarts is not None:
        apgd_restarts = fab_restarts = n_restarts
    out = []
    for name in names:
        if name in ("apgd-ce", "apgd-dlr"):
            s = {"n_iter": n_iter, "n_restarts": apgd_restarts, "eot_iter": eot_iter}
        elif name == "apgd-t":
            s = {"n_iter": n_iter, "n_restarts": 1, "n_target_classes": N_TARGET_CLASSES, "eot_iter": eot_iter}
        elif name == "fab":
            s = {"n_iter": n_iter, "n_restarts": fab_restarts}
        elif name == "fab-t":
            fab_restarts = 1  # the original sets fab.n_restarts = 1 for fab-t, and it stays so
            s = {"n_iter": n_iter, "n_restarts": 1, "n_target_classes": N_TARGET_CLASSES}
        else:
            s = {"n_queries": N_QUERIES, "n_restarts": 1, "p_init": P_INIT}
        out.append((name, s))
    return out


class AutoAttack(Attack):
    r"""AutoAttack (Croce & Hein 2020) with the original's settings, from torchattacks' members.

    Arguments:
        model (nn.Module): model to attack (takes [0, 1] images unless ``set_normalization_used``).
        norm (str): ``"Linf"`` or ``"L2"`` (flatplug's ``"linf"``/``"l2"`` too). (Default: "Linf")
        eps (float): radius of the norm ball. (Default: 8/255)
        version (str): ``"standard"``, ``"plus"``, ``"rand"`` or ``"custom"``. (Default: "standard")
        attacks_to_run (list of str): with ``version="custom"`` only: any of ``apgd-ce``, ``apgd-dlr``,
            ``fab``, ``square``, ``apgd-t``, ``fab-t``, run in that order.
        n_classes (int or None): the model's number of classes ``K`` (``None``: its output size); the
            targeted attacks use ``min(9, K - 1)`` target classes.
        n_iter (int or None): iterations of APGD, APGD-T and FAB (``None``: the original's 100); fewer
            make a cheaper, weaker evaluation (the leaderboard's CPU "AA-lite" uses 20).
        seed (int or None): seed of every member (``None``: the time, as the original). (Default: 0)
        verbose (bool): print the robust accuracy after each attack. (Default: False)

    Examples::
        >>> attack = AutoAttack(model, norm="Linf", eps=8/255)                      # RobustBench's
        >>> lite = AutoAttack(model, eps=8/255, version="custom", attacks_to_run=["apgd-ce", "apgd-t"])
        >>> adv_images = attack(images, labels)
    """

    def __init__(self, model, norm="Linf", eps=8 / 255, version="standard", attacks_to_run=None, n_classes=None,
                 n_iter=None, n_restarts=None, seed=0, verbose=False):
        super().__init__("AutoAttack", model)
        self.norm = torchattacks_norm(norm)
        self.eps = check_radius(eps, "eps")
        self.version = version
        self.settings = version_settings(version, attacks_to_run, n_iter, n_restarts)
        self.attacks_to_run = [name for name, _ in self.settings]
        if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2):
            raise ValueError(f"n_classes: expected an integer >= 2 or None (the model's output size), got {n_classes!r}")
        self.n_classes = n_classes
        self.seed = seed
        self.verbose = verbose
        self.supported_mode = ["default"]
        self.members = [self._member(name, s) for name, s in self.settings]
        #: robust accuracy after the clean pass and after each attack, of the last call
        self.robust_accuracy: dict[str, float] = {}

    def _member(self, name: str, s: dict) -> Attack:
        common = {"norm": self.norm, "eps": self.eps, "seed": 0, "verbose": self.verbose}
        if name in ("apgd-ce", "apgd-dlr"):
            return APGD(self.model, steps=s["n_iter"], n_restarts=s["n_restarts"], loss=name[5:],
                        eot_iter=s["eot_iter"], rho=0.75, **common)
        if name == "apgd-t":
            member = APGDT(self.model, steps=s["n_iter"], n_restarts=s["n_restarts"], eot_iter=s["eot_iter"],
                           rho=0.75, **common)
        elif name in ("fab", "fab-t"):
            member = FAB(self.model, steps=s["n_iter"], n_restarts=s["n_restarts"], alpha_max=0.1, eta=1.05,
                         beta=0.9, multi_targeted=name == "fab-t", **common)
        else:
            return Square(self.model, n_queries=s["n_queries"], n_restarts=s["n_restarts"], p_init=s["p_init"],
                          loss="margin", resc_schedule=False, **common)
        member.n_target_classes = s.get("n_target_classes", N_TARGET_CLASSES)
        return member

    def get_seed(self):
        return time.time() if self.seed is None else self.seed

    def forward(self, images, labels):
        r"""Overridden: the original's per-image ensemble on this batch."""
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        with torch.no_grad():
            logits = self.get_logits(images)
        robust = logits.argmax(1) == labels
        targets = min(N_TARGET_CLASSES, (self.n_classes or logits.shape[1]) - 1)
        adv = images.clone()
        n = max(len(labels), 1)
        self.robust_accuracy = {"clean": float(robust.sum()) / n}
        for name, member in zip(self.attacks_to_run, self.members):
            index = robust.nonzero().flatten()
            if index.numel() == 0:
                break
            member.seed = self.get_seed()
            if hasattr(member, "n_target_classes"):
                member.n_target_classes = min(member.n_target_classes, targets)
            # forward, not __call__: this attack's __call__ has set the model's mode and normalisation
            x_adv = member.forward(images[index], labels[index])
            with torch.no_grad():
                broken = self.get_logits(x_adv).argmax(1) != labels[index]
            adv[index[broken]] = x_adv[broken].detach()
            robust[index[broken]] = False
            self.robust_accuracy[name] = float(robust.sum()) / n
            if self.verbose:
                print(f"robust accuracy after {name.upper()}: {self.robust_accuracy[name]:.2%}")
        return adv
