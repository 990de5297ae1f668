"""The attack the core itself needs: PGD (Madry et al. 2018) in L-inf or L2, on [0, 1] images.

Adapters offer more (the torchattacks adapter registers every torchattacks attack); the core
uses this one for robust accuracy and adversarial training when nothing else is installed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._loss import LossFn, per_sample_loss, resolve_loss
from ._validation import check_choice, check_inputs, check_labels, check_logits, check_positive

NORMS = ("linf", "l2")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball of ``norm`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def ascent_step(grad: torch.Tensor, step: float, norm: str) -> torch.Tensor:
    """Steepest-ascent step of length ``step`` in ``norm``: sign for L-inf, normalised for L2."""
    return step * (grad.sign() if norm == "linf" else grad / _flat_norm(grad))


def random_start_delta(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform point of the L-inf ball, or a random direction with uniform radius in the L2 ball."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        return (2 * u - 1) * eps
    d = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    r = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return d / _flat_norm(d) * (eps * r).view(-1, *([1] * (x.dim() - 1)))


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int | None = 0,
    loss_fn: LossFn | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Adversarial examples maximising the loss inside the eps-ball, kept in the box ``clip``.

    ``clip``: the input box ``(lo, hi)`` every iterate is clamped to (default [0, 1], images);
    ``None`` leaves the inputs unconstrained, as in the analysis of linear models (Yamada et al.
    2021), where the worst L2 perturbation of a linear score is exactly ``-eps s w / ||w||``.
    The model's mode is not changed (call ``model.eval()`` first for evaluation); parameter
    gradients are not touched. ``step_size`` defaults to ``2.5 * eps / steps``.

    Each step ascends the *summed* per-sample loss (sign of its gradient for ``"linf"``, the
    gradient over its per-sample L2 norm for ``"l2"``): each sample's step is its own, as in Madry
    et al. (torchattacks ascends the batch mean and adds 1e-10 to each gradient norm, which shortens
    L2 steps only where gradients are tiny). ``random_start``: uniform in the L-inf ball, or a
    random direction at a radius uniform in [0, eps] for L2 (torchattacks' PGDL2 start); drawn from a private CPU generator seeded with ``seed`` (default 0:
    the same examples on every call; every batch of the same shape gets the same start noise),
    ``seed=None`` draws from torch's global generator.
    """
    check_choice(norm, "norm", NORMS)
    check_positive(eps, "eps", allow_zero=True)
    if steps < 1:
        raise ValueError(f"steps: expected at least 1 step, got {steps}")
    clip = check_clip(clip)
    check_inputs(x, unit_range=clip == (0.0, 1.0))
    if clip is not None and clip != (0.0, 1.0) and (float(x.min()) < clip[0] or float(x.max()) > clip[1]):
        raise ValueError(f"x: inputs lie in [{float(x.min()):g}, {float(x.max()):g}], outside clip={clip}; "
                         "pass the box the inputs live in, or clip=None for unconstrained inputs")
    check_labels(y, x.shape[0])
    loss_fn = resolve_loss(loss_fn)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    x = x.detach()
    delta = random_start_delta(x, eps, norm, gen) if random_start and eps > 0 else torch.zeros_like(x)
    delta = _into_box(x, delta, clip)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            logits = check_logits(model(x + delta), y)
            loss = per_sample_loss(loss_fn, logits, y).sum()
            (grad,) = torch.autograd.grad(loss, delta)
        delta = project(delta.detach() + ascent_step(grad, alpha, norm), eps, norm)
        delta = _into_box(x, delta, clip)
    return (x + delta).detach()


def check_clip(clip: object) -> tuple[float, float] | None:
    """``None`` (unconstrained inputs) or a box ``(lo, hi)`` with ``lo < hi``, as floats."""
    if clip is None:
        return None
    if (not isinstance(clip, (tuple, list)) or len(clip) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in clip)
            or not float(clip[0]) < float(clip[1])):
        raise ValueError(f"clip: expected None (unconstrained inputs) or a box (lo, hi) with lo < hi, got {clip!r}")
    return float(clip[0]), float(clip[1])


def _into_box(x: torch.Tensor, delta: torch.Tensor, clip: tuple[float, float] | None) -> torch.Tensor:
    return delta if clip is None else (x + delta).clamp(*clip) - x


def correct_under(model: nn.Module, data, attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  ) -> torch.Tensor:
    """Per sample, whether ``model`` classifies ``attack(x, y)`` (``x`` itself when ``attack`` is None) correctly.

    The one accuracy loop of flatplug (scoring, examples and the ART trainers' validation use it):
    the model runs in eval mode and is restored afterwards; ``data`` is ``(x, y)`` or batches of
    images in [0, 1]. Returns a bool tensor ``[N]`` on the CPU, in the order of ``data``.
    """
    from ._data import Batches, model_device_dtype
    from ._state import preserved

    out = []
    device, dtype = model_device_dtype(model)
    with preserved(model):
        for x, y in Batches(data, unit_range=True).to(device, dtype):
            if attack is not None:
                x = attack(x, y).detach()
            with torch.no_grad():
                out.append((model(x).argmax(1) == y).cpu())
    return torch.cat(out)


def accuracy(model: nn.Module, data, attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> float:
    """Fraction of ``data`` classified correctly, clean (``attack=None``) or under ``attack(x, y) -> x_adv``."""
    return float(correct_under(model, data, attack).float().mean())


def robust_accuracy(model: nn.Module, data, *, eps: float, norm: str = "linf", steps: int = 10, **kw) -> float:
    """Accuracy under :func:`pgd` over ``data`` (eval mode, restored afterwards)."""
    return accuracy(model, data, lambda x, y: pgd(model, x, y, eps=eps, norm=norm, steps=steps, **kw))
