"""Weight-space helpers shared by the perturbation measures (sharpness, loss landscapes).

The loss over ``data`` is the mean of the per-sample losses over all samples, accumulated
batch by batch (one batch's graph alive at a time); gradients of that mean are accumulated
the same way, with ``torch.autograd.grad`` so that no ``.grad`` field is touched.

With an ``attack`` the loss is the *robust* loss (Stutz et al. 2021, "Relating Adversarially
Robust Generalization to Flat Minima"; Yamada et al. 2021): every batch is attacked at the
current weights, then the loss is taken on the adversarial examples. Its gradient w.r.t. the
weights is the gradient at those fixed examples (Danskin's theorem, for the exact maximiser).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ._data import Batches, model_device_dtype
from ._loss import LossFn, per_sample_loss
from ._validation import check_logits


def data_loss(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFn,
    *,
    grad_params: Sequence[torch.Tensor] | None = None,
    attack: Attack | None = None,
) -> tuple[float, float, list[torch.Tensor] | None]:
    """Mean loss and accuracy over all of ``batches``; with ``grad_params`` also the mean loss's gradient.

    The loss is summed in float64 and divided by the number of samples; accuracy is the fraction
    of samples whose largest logit is the label. Parameters the loss does not reach get zero gradients.
    ``attack(model, x, y) -> x_adv`` replaces each batch by its adversarial examples at the
    current weights first (the robust loss and robust accuracy).
    """
    device, dtype = model_device_dtype(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    grads: list[torch.Tensor] | None = None
    if grad_params is not None:
        grads = [torch.zeros_like(p) for p in grad_params]
    for x, y in batches.to(device, dtype):
        if attack is not None:
            x = attack(model, x, y).detach()
        if grad_params is None:
            with torch.no_grad():
                logits = check_logits(model(x), y)
                losses = per_sample_loss(loss_fn, logits, y)
        else:
            with torch.enable_grad():
                logits = check_logits(model(x), y)
                losses = per_sample_loss(loss_fn, logits, y)
                if losses.requires_grad:
                    parts = torch.autograd.grad(losses.sum(), list(grad_params), allow_unused=True)
                else:
                    parts = [None] * len(grad_params)
            assert grads is not None
            for acc, part in zip(grads, parts):
                if part is not None:
                    acc.add_(part.detach())
        total += losses.detach().to(torch.float64).sum()
        correct += (logits.detach().argmax(1) == y).sum()
        count += y.shape[0]
    if grads is not None:
        grads = [g / count for g in grads]
    return float(total / count), float(correct) / count, grads


Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: the keys of ``adversarial=`` and their defaults (those of :func:`flatplug.attacks.pgd`)
ADVERSARIAL_DEFAULTS: dict[str, Any] = {"norm": "linf", "steps": 10, "step_size": None, "random_start": True,
                                        "clip": (0.0, 1.0), "seed": 0}


def adversarial_attack(spec: Mapping[str, Any] | None, loss_fn: LossFn) -> tuple[Attack | None, dict | None]:
    """The PGD attack that ``adversarial={eps, norm, steps, step_size, random_start, clip, seed}`` describes.

    Returns ``(attack, settings)``, or ``(None, None)`` for ``spec=None``. The attack maximises the
    measure's own ``loss_fn``; ``eps`` is required, the rest default as in :func:`flatplug.attacks.pgd`
    (``clip=None``: unconstrained inputs). With a fixed ``seed`` the random start is the same at every
    weight, so the robust loss is a deterministic function of the weights.
    """
    from .attacks import NORMS, check_clip, pgd
    from ._validation import check_choice, check_positive

    if spec is None:
        return None, None
    if not isinstance(spec, Mapping):
        raise TypeError(f"adversarial: expected a dict such as {{'eps': 0.03, 'norm': 'linf'}}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(ADVERSARIAL_DEFAULTS) - {"eps"})
    if unknown:
        raise ValueError(f"adversarial: unknown keys {unknown}; accepted: eps (required), "
                         f"{', '.join(ADVERSARIAL_DEFAULTS)}")
    if "eps" not in spec:
        raise ValueError("adversarial: 'eps' (the attack's radius) is required, e.g. adversarial={'eps': 8/255}")
    settings = {**ADVERSARIAL_DEFAULTS, **spec}
    check_positive(settings["eps"], "adversarial eps", allow_zero=True)
    check_choice(settings["norm"], "adversarial norm", NORMS)
    steps = settings["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"adversarial steps: expected a positive integer, got {steps!r}")
    if settings["step_size"] is not None:
        check_positive(settings["step_size"], "adversarial step_size")
    settings["clip"] = check_clip(settings["clip"])
    kw = {k: settings[k] for k in ("eps", "norm", "steps", "step_size", "random_start", "clip", "seed")}

    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(model, x, y, loss_fn=loss_fn, **kw)

    settings["eps"] = float(settings["eps"])
    settings["clip"] = None if settings["clip"] is None else list(settings["clip"])
    return attack, settings


def set_weights(params: Sequence[torch.Tensor], base: Sequence[torch.Tensor], *offsets: tuple[float, Sequence[torch.Tensor]]) -> None:
    """In place: ``p = base + sum_k scale_k * direction_k`` for every parameter ``p``.

    ``offsets`` are ``(scale, directions)`` pairs; a zero scale leaves ``base`` bit-for-bit.
    """
    with torch.no_grad():
        for i, (p, b) in enumerate(zip(params, base)):
            value = b
            for scale, directions in offsets:
                if scale != 0.0:
                    value = value + scale * directions[i]
            p.copy_(value)


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The l2 norm of the concatenation of ``tensors`` (a 0-d tensor)."""
    return torch.sqrt(sum(t.detach().pow(2).sum() for t in tensors))  # type: ignore[arg-type]


def random_like(params: Sequence[torch.Tensor], generator: torch.Generator, kind: str = "normal") -> list[torch.Tensor]:
    """Random tensors shaped like ``params``, drawn on the CPU from ``generator`` (device-independent).

    ``kind``: ``"normal"`` (N(0, 1)), ``"uniform"`` (U[-1, 1]) or ``"sign"`` (Rademacher +-1).
    """
    out = []
    for p in params:
        dtype = p.dtype if p.is_floating_point() else torch.float32
        if kind == "normal":
            r = torch.randn(p.shape, generator=generator, dtype=dtype)
        elif kind == "uniform":
            r = 2.0 * torch.rand(p.shape, generator=generator, dtype=dtype) - 1.0
        elif kind == "sign":
            r = 2.0 * torch.randint(0, 2, p.shape, generator=generator).to(dtype) - 1.0
        else:
            raise ValueError(f"kind: expected 'normal', 'uniform' or 'sign', got {kind!r}")
        out.append(r.to(p.device))
    return out
