"""SAM (Foret et al. 2021, https://arxiv.org/abs/2010.01412) and ASAM (Kwon et al. 2021,
https://arxiv.org/abs/2102.11600) as an ART trainer."""

from __future__ import annotations

from flatplug.training import ASAM, SAM

from .._build import given
from .base import FlatTrainer


class SAMTrainer(FlatTrainer):
    """Train ``classifier`` with sharpness-aware minimisation of radius ``rho`` (``adaptive=True``: ASAM).

    Arguments left at None take the core methods' defaults: ``rho`` 0.05 for SAM and 0.5 for ASAM
    (whose radius is relative to the weights' magnitudes), ASAM's offset ``eta`` 0.01.
    Weight-space only: clip values are not needed, and numpy preprocessing defences that ART
    applies outside training are allowed.
    """

    def __init__(self, classifier, *, rho: float | None = None, adaptive: bool = False, eta: float | None = None) -> None:
        super().__init__(classifier)
        cls = ASAM if adaptive else SAM
        self._use(cls(**given(rho=rho, eta=eta)))
