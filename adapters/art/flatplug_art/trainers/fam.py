"""FAM (cross-entropy plus lambda times the penultimate layer's relative flatness) as an ART trainer."""

from __future__ import annotations

from flatplug.training import FAM

from .._build import resolve_layer
from .base import FlatTrainer


class FAMTrainer(FlatTrainer):
    """Train ``classifier`` with ``CE + lam * relative flatness`` of ``layer`` (Petzka et al. 2021's kappa_Tr).

    ``layer``: the ``nn.Linear`` producing the logits, by its name in the classifier's own network
    or as the module; default the last ``nn.Linear``. ``variant``: ``"pairwise"`` or ``"trace"``.
    """

    def __init__(self, classifier, *, lam: float = 0.01, layer=None, variant: str = "pairwise") -> None:
        super().__init__(classifier)
        self._use(FAM(lam=lam, layer=resolve_layer(classifier, layer), variant=variant))
