"""FlatRegionAttack: adversarial examples that are confidently wrong and sit where the loss is flat.

Walter et al. 2025 ("When Flatness Does (Not) Guarantee Adversarial Robustness") show that
adversarial examples can lie in regions that are flat in the relative-flatness sense of the
penultimate layer (Petzka et al. 2021) while the model is confidently wrong there: flatness
around an example does not certify its label. This attack produces such examples. Each sample
runs PGD on the cross-entropy until its label flips (untargeted) or the target is predicted
(targeted); from then on it ascends

    score(x') = log p_wrong(x') - flatness_weight * log kappa(x'),

where ``p_wrong`` is the largest wrong-class probability (the target's in targeted mode) and
``kappa`` is the per-sample relative flatness of the penultimate layer (the core's
differentiable closed form). Logs make the two terms scale-free. The best-scoring misclassified
iterate is returned; a sample that never crosses returns its last PGD iterate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from flatplug.measures.relative_flatness import VARIANTS

from ._checks import check_logits_shape, validate
from ._features import capture, flatness, penultimate
from ._options import check_count, check_radius, check_step, flatplug_norm


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


class FlatRegionAttack(Attack):
    r"""Misclassified, confidently wrong examples of low relative flatness (Walter et al. 2025).

    Arguments:
        model (nn.Module): model to attack, ending in the ``nn.Linear`` that produces the logits.
        eps (float): radius of the ball. (Default: 8/255)
        alpha (float): step size. (Default: 2/255)
        steps (int): number of steps. (Default: 10)
        norm (str): ``"Linf"`` (sign steps) or ``"L2"`` (normalised steps). (Default: ``"Linf"``)
        flatness_weight (float): weight of ``-log kappa`` against ``log p_wrong``. (Default: 1.0)
        layer (str, nn.Module or None): the penultimate-weights layer; None for the last
            ``nn.Linear``. (Default: None)
        variant (str): ``"pairwise"`` (Petzka's kappa_Tr) or ``"trace"``. (Default: ``"pairwise"``)
        random_start (bool): start at a uniformly random point of the ball. (Default: True)

    Supports the default and the targeted modes of torchattacks.

    Examples::
        >>> attack = FlatRegionAttack(model, eps=8/255, alpha=2/255, steps=10)
        >>> adv_images = attack(images, labels)
    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, norm="Linf", flatness_weight=1.0,
                 layer=None, variant="pairwise", random_start=True):
        super().__init__("FlatRegionAttack", model)
        self.eps = check_radius(eps, "eps")
        self.alpha = check_step(alpha, "alpha")
        self.steps = check_count(steps, "steps")
        self.norm = flatplug_norm(norm)
        self.flatness_weight = check_radius(flatness_weight, "flatness_weight")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
        self.variant = variant
        self.layer = layer
        penultimate(model, layer)  # fail now, not at the first call, if there is no such layer
        self.random_start = bool(random_start)
        self.supported_mode = ["default", "targeted"]

    # -- pieces ------------------------------------------------------------
    def _start(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start or self.eps == 0:
            return images.clone()
        if self.norm == "linf":
            delta = torch.empty_like(images).uniform_(-self.eps, self.eps)
        else:
            delta = torch.empty_like(images).normal_()
            radius = torch.zeros(images.shape[0], device=images.device, dtype=images.dtype).uniform_(0, 1)
            delta = delta / _flat_norm(delta) * (self.eps * radius).view(-1, *([1] * (images.dim() - 1)))
        return torch.clamp(images + delta, 0, 1)

    def _project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        delta = adv - images
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * (self.eps / _flat_norm(delta)).clamp(max=1.0)
        return torch.clamp(images + delta, 0, 1)

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        return self.alpha * (grad.sign() if self.norm == "linf" else grad / _flat_norm(grad))

    def _evaluate(self, adv, labels, target, layer):
        """Logits, the crossing mask, the flat-region score and the objective to ascend, per sample."""
        with capture(layer) as box:
            logits = check_logits_shape(self, self.get_logits(adv), adv.shape[0])
        phi = box.take(logits)
        kappa = flatness(phi, layer, self.variant)
        logp = F.log_softmax(logits, dim=1)
        if self.targeted:
            wrong_logp = logp.gather(1, target[:, None]).squeeze(1)
            crossed = logits.argmax(1) == target
            before = wrong_logp  # targeted PGD: raise the target's log-probability
        else:
            wrong_logp = logp.scatter(1, labels[:, None], float("-inf")).amax(1)
            crossed = logits.argmax(1) != labels
            before = -logp.gather(1, labels[:, None]).squeeze(1)  # PGD: cross-entropy of the true label
        tiny = torch.finfo(kappa.dtype).tiny
        score = wrong_logp - self.flatness_weight * torch.log(kappa.clamp_min(tiny))
        objective = torch.where(crossed, score, before)
        return logits, crossed.detach(), score.detach(), objective

    # -- the attack --------------------------------------------------------
    def forward(self, images, labels):
        r"""Overridden."""
        images, labels = validate(self, images, labels)
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        target = self.get_target_label(images, labels) if self.targeted else None
        layer = penultimate(self.model, self.layer)
        view = (-1,) + (1,) * (images.dim() - 1)

        adv = self._start(images).detach()
        best = adv.clone()
        best_score = torch.full((images.shape[0],), float("-inf"), device=images.device, dtype=images.dtype)
        ever_crossed = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for step in range(self.steps + 1):
            adv.requires_grad_(True)
            logits, crossed, score, objective = self._evaluate(adv, labels, target, layer)
            better = crossed & (score > best_score)
            best = torch.where(better.view(view), adv.detach(), best)
            best_score = torch.where(better, score, best_score)
            ever_crossed |= crossed
            if step == self.steps:
                break
            (grad,) = torch.autograd.grad(objective.sum(), adv)
            adv = self._project(adv.detach() + self._step(grad), images).detach()
        return torch.where(ever_crossed.view(view), best, adv.detach()).detach()
