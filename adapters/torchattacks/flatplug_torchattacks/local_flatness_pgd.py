"""LocalFlatnessPGD: the inner maximiser of Local Flatness Regularisation as a torchattacks attack.

Xu et al. 2020 ("Adversarial Defense via Local Flatness Regularization", https://arxiv.org/abs/1910.12165) regularise
``max_{x' in B_eps(x)} ||grad_x' l(x', y)||_q``; this attack returns that maximising point, found
by sign (L-inf) or normalised (L2) ascent on the gradient norm with double backpropagation. The
ascent is the core's :func:`flatplug.measures.local_flatness.max_gradient_norm_point`, the same
function the LFR trainer uses, run through the attack's ``get_logits`` so that torchattacks'
normalisation (``set_normalization_used``) and model-mode settings apply.
"""

from __future__ import annotations

import torch
from torchattacks.attack import Attack

from flatplug.measures.local_flatness import max_gradient_norm_point

from ._checks import validate
from ._options import check_count, check_radius, check_step, flatplug_norm


class LocalFlatnessPGD(Attack):
    r"""The point of the eps-ball with the largest input-gradient norm ``||grad_x l(x, y)||_q``.

    Arguments:
        model (nn.Module): model to attack (takes [0, 1] images unless ``set_normalization_used``).
        eps (float): radius of the ball. (Default: 8/255)
        alpha (float or None): ascent step size; None for ``2.5 * eps / steps``. (Default: None)
        steps (int): ascent steps. (Default: 10)
        norm (str): ``"Linf"`` or ``"L2"`` ball. (Default: ``"Linf"``)
        q (1, 2, inf or None): order of the gradient norm; None for the dual norm of the ball (1 for
            L-inf, 2 for L2), the core's default (``flatplug.measures.local_flatness``). (Default: None)
        random_start (bool): start within ``0.1 * eps`` of the image. (Default: True)
        seed (int or None): seed of the random start; None uses torch's global RNG like
            torchattacks' own attacks. (Default: None)
        loss_fn: ``loss_fn(logits, labels) -> per-sample losses``; None for cross-entropy.

    Only the default (untargeted) mode: the objective is a gradient norm, not a misclassification.
    The returned images are the best point seen per sample (the clean image included), so their
    gradient norm is never below the clean one.

    Examples::
        >>> attack = LocalFlatnessPGD(model, eps=8/255, steps=10)      # q: 1, the dual of L-inf
        >>> x_lf = attack(images, labels)
    """

    def __init__(self, model, eps=8 / 255, alpha=None, steps=10, norm="Linf", q=None, random_start=True,
                 seed=None, loss_fn=None):
        super().__init__("LocalFlatnessPGD", model)
        self.eps = check_radius(eps, "eps")
        self.alpha = None if alpha is None else check_step(alpha, "alpha")
        self.steps = check_count(steps, "steps")
        self.norm = flatplug_norm(norm)
        if q is not None and (isinstance(q, bool) or q not in (1, 2, float("inf"), "inf")):
            raise ValueError(f"q: expected the gradient norm's order 1, 2, float('inf') or None (the dual norm of "
                             f"the ball), got {q!r}")
        self.q = q
        self.random_start = bool(random_start)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed: expected an integer or None, got {seed!r}")
        self.seed = seed
        self.loss_fn = loss_fn
        self.supported_mode = ["default"]
        # tensors bypass Attack.__setattr__, whose search for sub-attacks compares values with ==
        object.__setattr__(self, "last_grad_norms", None)

    def forward(self, images, labels):
        r"""Overridden."""
        images, labels = validate(self, images, labels)
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=images.device).manual_seed(self.seed)
        order = {} if self.q is None else {"q": self.q}  # None: the core's default, the ball's dual norm
        adv_images, norms = max_gradient_norm_point(
            self.get_logits, images, labels, eps=self.eps, norm=self.norm, steps=self.steps,
            step_size=self.alpha, random_start=self.random_start, generator=generator, loss_fn=self.loss_fn, **order,
        )
        object.__setattr__(self, "last_grad_norms", norms.detach())
        return adv_images.detach()
