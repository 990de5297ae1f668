"""PGD adversarial training with a flatness method as its descent step: SAM, ASAM or FAM on PGD examples.

PGD-AT: Madry et al. 2018, https://arxiv.org/abs/1706.06083; SAM: Foret et al. 2021,
https://arxiv.org/abs/2010.01412; ASAM: Kwon et al. 2021, https://arxiv.org/abs/2102.11600; FAM:
Adilova et al. 2023, https://arxiv.org/abs/2307.02337 (the combinations are flatplug's).

``step``: PGD examples are made from the clean batch (eval mode, as the core's PGD-AT does), then
the flatness method takes its ordinary step on ``(x_adv, y)``. So ``pgd-at+sam`` minimises the
worst-case loss over a weight neighbourhood of the adversarial loss (SAM's ascent and
descent, both on the PGD examples), and ``pgd-at+fam`` penalises the relative flatness
of the penultimate layer at the adversarial points. Each is the core's ``PGDAT`` (for the
examples) composed with the core's ``SAM``/``ASAM``/``FAM`` (for the update): no new maths.
The history's accuracy is the accuracy on the adversarial batch, as for the core's PGD-AT.
(AWP and LFR already combine with PGD in the core: ``awp``, and ``lfr`` with ``adversarial=True``.)
"""

from __future__ import annotations

from flatplug.training import ASAM, FAM, PGDAT, SAM, TrainingMethod

PGD_KEYS = ("eps", "step_size", "steps", "random_start", "norm", "attack")


class PGDATWith(TrainingMethod):
    """PGD-AT whose update on the PGD examples is ``inner``'s step."""

    name = "art.pgd-at+"
    needs_unit_inputs = True
    inner_class: type[TrainingMethod] = SAM

    def __init__(self, eps: float = 8 / 255, step_size: float | None = None, steps: int = 10,
                 random_start: bool = True, norm: str = "linf", attack=None, **inner_params):
        self.pgd = PGDAT(eps=eps, step_size=step_size, steps=steps, random_start=random_start, norm=norm,
                         attack=attack)
        try:
            self.inner = self.inner_class(**inner_params)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    def step(self, model, x, y, optimizer):
        x_adv = self.pgd.adversarial(model, x, y)
        return self.inner.step(model, x_adv, y, optimizer)

    def set_loss(self, loss_fn=None, reduction: str = "mean") -> "PGDATWith":
        """The loss of both halves: PGD's examples and the inner method's update."""
        super().set_loss(loss_fn, reduction)
        self.pgd.set_loss(loss_fn, reduction)
        self.inner.set_loss(loss_fn, reduction)
        return self

    def settings(self) -> dict:
        return {**self.pgd.settings(), **self.inner.settings()}


class PGDATSAM(PGDATWith):
    name = "art.pgd-at+sam"
    inner_class = SAM


class PGDATASAM(PGDATWith):
    name = "art.pgd-at+asam"
    inner_class = ASAM


class PGDATFAM(PGDATWith):
    name = "art.pgd-at+fam"
    inner_class = FAM


#: registered name -> class (plain torch TrainingMethods: ``fp.train(model, loader, method="art.pgd-at+sam")``)
METHODS = {cls.name: cls for cls in (PGDATSAM, PGDATASAM, PGDATFAM)}
