"""FAM (Adilova et al. 2023, "FAM: Relative Flatness Aware Minimization", https://arxiv.org/abs/2307.02337)
as an ART trainer: the loss plus lambda times the penultimate layer's relative flatness."""

from __future__ import annotations

from flatplug.training import FAM

from .._build import given, resolve_layer
from .base import FlatTrainer


class FAMTrainer(FlatTrainer):
    """Train ``classifier`` with ``loss + lam * relative flatness`` of ``layer`` (Petzka et al. 2021's kappa_Tr).

    ``layer``: the ``nn.Linear`` producing the logits, by its name in the classifier's own network
    or as the module; default the last ``nn.Linear``. ``variant``: ``"pairwise"`` or ``"trace"``.
    Arguments left at None take the core method's defaults (``flatplug.training.FAM``).
    """

    def __init__(self, classifier, *, lam: float | None = None, layer=None, variant: str | None = None) -> None:
        super().__init__(classifier)
        self._use(FAM(**given(lam=lam, layer=resolve_layer(classifier, layer), variant=variant)))
