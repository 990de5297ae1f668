"""LFR: local flatness regularisation (Xu et al. 2020, "Adversarial Defense via Local Flatness
Regularization", ICIP 2020, https://arxiv.org/abs/1910.12165).

The paper trains ``min_theta E[ l(x, y) + lam * LF(x) ]`` with ``LF(x) = max_{x' in B_eps(x)}
||grad_x' l(x', y)||_q`` (see :mod:`flatplug.measures.local_flatness`). One step of :class:`LFR`:

1. inner maximisation, model in eval mode, weights frozen: ``steps`` steps of projected sign
   (linf) / normalised (l2) ascent on ``||grad_x' l||_q`` by double backpropagation, from a random
   start within ``0.1 * eps`` of ``x``, step ``2.5 * eps / steps``; the last iterate ``x'`` is used
   (:func:`~flatplug.measures.local_flatness.ascent_point`);
2. outer objective ``objective(model(x), y) + lam * reduce_i ||grad_x' l(x'_i, y_i)||_q``
   (``reduce`` is the objective's own reduction: mean by default), differentiated w.r.t. the
   weights through the input gradient (double backprop). The cross-entropy term runs in train
   mode, as in standard training (batch-norm statistics update from the clean batch); the
   regulariser runs afterwards in eval mode (with the running statistics that update left), so
   each sample's term is its own input-gradient norm, the value computed for that sample alone,
   and equals what the ``local_flatness`` measure evaluates at ``x'`` (in train mode, batch norm
   couples the samples: one image's "gradient" then depends on the rest of the batch; on the BN
   network of ``tests/test_lfr.py``, 17.8 in a batch of 12 against 0.73 alone). With
   ``set_loss(loss_fn, reduction="sum")`` both terms are summed, so ``lam`` keeps its meaning.

Relation to the official code (github.com/Uooga/Local-Flatness-Regularization,
``loss_function/LFR_loss.py``): the same sign ascent on the L1 norm (q = 1, linf ball) in eval mode,
the same last iterate, the same loss ``CE(x) + lam * mean_i ||grad_x' CE_i||_1`` (the official code
differentiates the batch-mean cross-entropy and multiplies the mean L1 norm by the batch size,
which is exactly the mean of per-sample gradient norms), so ``lam`` means the same: the paper's
0.02 (MNIST, eps 0.3) and 0.03 (CIFAR-10, eps 8/255). Differences: the official regulariser runs
in train mode (see above), its start is Gaussian noise of standard deviation 0.001 and its step a
fixed 0.01 (MNIST, 40 steps) or 0.007 (CIFAR-10, 7-10 steps); the default here is
``2.5 * eps / steps`` with ``steps = 10``, and ``q=None`` follows the ball (2 for l2; the official
code only has linf).

``adversarial=True`` is flatplug's extension, not the paper's objective: it adds the objective on
a PGD example, ``CE(x) + CE(x_adv) + lam * LFR``, combining LFR with PGD adversarial training.

Cost: one step is ``steps`` double-backward inner steps plus one double-backward outer pass, the
official algorithm's count; the inner steps run with the weights' ``requires_grad`` off and the
outer backward fills only the optimizer's parameters (``benchmarks/training_steps.py`` compares
it with a re-implementation of the official step).
"""

from __future__ import annotations

import torch
from torch import nn

from .._loss import cross_entropy
from .._validation import check_positive
from ..measures.local_flatness import STEPS, ascent_point, check_settings, gradient_norms, q_label, resolve_q
from .base import StepResult, TrainingMethod, evaluating
from .pgd_at import adversarial_examples

#: the regulariser's default weight: the official code's 0.02 (MNIST; 0.03 on CIFAR-10)
LAM = 0.02


def lfr_regularizer(model: nn.Module, x_lf: torch.Tensor, y: torch.Tensor, *, q: float | str | None = None,
                    norm: str = "linf", method: TrainingMethod | None = None) -> torch.Tensor:
    """``reduce_i ||grad_x l(x_i, y_i)||_q`` at the points ``x_lf``, differentiable w.r.t. the weights.

    Evaluated in eval mode (the model's mode restored after), so each term is the sample's own
    gradient norm. ``q=None``: the dual norm of ``norm``'s ball. ``l`` is ``method.loss_fn``
    (cross-entropy when None) and the norms are reduced as ``method``'s objective is (mean by
    default, sum for ``reduction="sum"``).
    """
    qf = resolve_q(q, norm)
    loss_fn = cross_entropy if method is None else method.loss_fn
    with evaluating(model):
        _, norms = gradient_norms(model, x_lf, y, loss_fn, qf, create_graph=True)
    return norms.mean() if method is None else method.reduce(norms)


class LFR(TrainingMethod):
    """Local flatness regularisation (Xu et al. 2020), see the module docstring.

    ``eps``/``norm``: the ball; ``lam``: the regulariser's weight; ``q``: the gradient norm
    (``None``: dual of the ball); ``steps``/``step_size``/``random_start``: the inner ascent;
    ``adversarial=True`` (flatplug's extension) adds the objective on PGD examples
    (``pgd_steps`` steps, or a user ``attack(x, y)``).

    ``lam``'s default is the official MNIST run's (0.02, at eps 0.3 there), set for the L1 norm of the
    L-inf ball; ``eps``'s default is CIFAR-10's 8/255, where the official CIFAR-10 run used
    ``lam=0.03`` (and its readme reports that run as a failure case): pass both for your data.
    With ``norm="l2"`` (``q = 2``, which the paper does not use) the gradient norm is smaller (up
    to ``sqrt(d)`` times), so the same ``lam`` regularises less: on MNIST (a 784-128-64-10 MLP, 2,000 images, 2
    epochs, l2 eps 1.5) PGD-20 accuracy rose from 0.256 / 0.186 (standard, two seeds) to 0.310 /
    0.248 with the default and to 0.400 / 0.332 with ``lam=0.1`` (PGD-AT: 0.490 / 0.458).
    """

    name = "lfr"
    #: 2: regulariser in eval mode, q follows the ball, defaults lam 0.02 / 10 steps, last iterate
    version = "2"
    paper = "Xu et al. 2020, Adversarial Defense via Local Flatness Regularization, https://arxiv.org/abs/1910.12165"
    needs_unit_inputs = True

    def __init__(self, eps: float = 8 / 255, lam: float = LAM, q: float | str | None = None, norm: str = "linf",
                 steps: int = STEPS, step_size: float | None = None, random_start: bool = True,
                 adversarial: bool = False, pgd_steps: int = 10, attack=None):
        qf = check_settings(eps, norm, q, steps, step_size)
        check_positive(lam, "lam", allow_zero=True)
        if steps < 1:
            raise ValueError(f"steps: expected at least 1 inner ascent step, got {steps}")
        if isinstance(pgd_steps, bool) or not isinstance(pgd_steps, int) or pgd_steps < 1:
            raise ValueError(f"pgd_steps: expected a positive integer number of PGD steps, got {pgd_steps!r}")
        if attack is not None and not adversarial:
            raise ValueError("attack: only used for the PGD term of adversarial=True; pass adversarial=True or drop attack")
        self.eps, self.lam, self.q, self.norm = eps, lam, q_label(qf), norm
        self.steps, self.step_size, self.random_start = steps, step_size, bool(random_start)
        self.adversarial, self.pgd_steps, self.attack = bool(adversarial), pgd_steps, attack

    def step(self, model, x, y, optimizer):
        with evaluating(model):
            x_lf = ascent_point(model, x, y, eps=self.eps, norm=self.norm, q=self.q, steps=self.steps,
                                step_size=self.step_size, random_start=self.random_start, loss_fn=self.loss_fn)
        x_adv = None
        if self.adversarial:
            x_adv = adversarial_examples(model, x, y, eps=self.eps, norm=self.norm, steps=self.pgd_steps,
                                         step_size=None, random_start=True, attack=self.attack)
        optimizer.zero_grad(set_to_none=True)
        # train-mode passes first: they update batch-norm buffers that the eval-mode pass below saves
        logits = model(x)
        loss = self.objective(logits, y)
        if x_adv is not None:
            loss = loss + self.objective(model(x_adv), y)
        loss = loss + self.lam * lfr_regularizer(model, x_lf, y, q=self.q, norm=self.norm, method=self)
        # gradients for what the optimizer steps only (not for x', a leaf of the regulariser's graph)
        stepped = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        loss.backward(inputs=stepped or None)
        optimizer.step()
        return StepResult(float(loss.detach()), logits.detach())
