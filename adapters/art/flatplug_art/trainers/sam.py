"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021) as an ART trainer."""

from __future__ import annotations

from flatplug.training import ASAM, SAM

from .base import FlatTrainer


class SAMTrainer(FlatTrainer):
    """Train ``classifier`` with sharpness-aware minimisation of radius ``rho`` (``adaptive=True``: ASAM).

    ``rho`` defaults to 0.05 for SAM and 0.5 for ASAM (the radius is relative to the weights'
    magnitudes there); ``eta`` is ASAM's offset. Weight-space only: clip values are not needed.
    """

    def __init__(self, classifier, *, rho: float | None = None, adaptive: bool = False, eta: float = 0.01) -> None:
        super().__init__(classifier)
        cls = ASAM if adaptive else SAM
        self._use(cls(eta=eta) if rho is None else cls(rho=rho, eta=eta))
