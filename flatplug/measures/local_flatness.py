"""Local flatness in input space (Xu et al. 2020, "Adversarial Defense via Local Flatness Regularization").

For a sample ``(x, y)``:

    LF(x) = max_{||x' - x||_p <= eps, x' in [0, 1]} ||grad_{x'} l(x', y)||_q

the largest input-gradient norm of the loss in the ``eps``-ball: a large value means the loss
surface around ``x`` is steep somewhere close by, which an attacker can exploit. The inner
maximum is found by projected ascent on the gradient norm itself, differentiated by double
backpropagation (``create_graph=True``, then the gradient of the norm w.r.t. ``x'``): sign steps
for ``norm="linf"``, normalised-gradient steps for ``norm="l2"``, each followed by projection
onto the ball and clipping to [0, 1]. The per-sample maximum keeps the largest norm seen,
including at ``x`` itself, so ``LF(x) >= ||grad_x l(x, y)||_q`` always.

``max_gradient_norm_point`` is the reusable inner maximiser (the LFR training method and the
torchattacks adapter call it); ``local_flatness`` is the measure over a dataset.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from .._data import Batches, model_device_dtype
from .._loss import LossFn, per_sample_loss, resolve_loss
from .._progress import progress
from .._state import preserved
from .._validation import check_choice, check_inputs, check_labels, check_logits
from ..attacks import ascent_step, project
from ..attacks import random_start_delta as random_start_point
from ..registry import MeasureInfo
from ..types import Batch, Measurement

NORMS = ("l2", "linf")

#: the random start lies within this fraction of eps of x
START_FRACTION = 0.1


def _check_settings(eps: float, norm: str, q: float | str, steps: int, step_size: float | None) -> float:
    """Validate the shared settings; returns ``q`` as a float (1, 2 or inf)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a non-negative finite radius (e.g. 8/255 for linf), got {eps!r}")
    check_choice(norm, "norm", NORMS)
    if isinstance(q, str) and q.lower() in ("inf", "infinity"):
        q = math.inf
    if isinstance(q, bool) or not isinstance(q, (int, float)) or float(q) not in (1.0, 2.0, math.inf):
        raise ValueError(f"q: expected the gradient norm's order 1, 2 or float('inf'), got {q!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer number of ascent steps, got {steps!r}")
    if step_size is not None and (
        isinstance(step_size, bool) or not isinstance(step_size, (int, float))
        or not math.isfinite(step_size) or step_size <= 0
    ):
        raise ValueError(f"step_size: expected a positive finite number (or None for 2.5 * eps / steps), got {step_size!r}")
    return float(q)


def _per_sample_norm(t: torch.Tensor, order: float) -> torch.Tensor:
    flat = t.reshape(t.shape[0], -1)
    if order == math.inf:
        return flat.abs().amax(1)
    if order == 1.0:
        return flat.abs().sum(1)
    return flat.pow(2).sum(1).sqrt()


def _project(xp: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ``eps``-ball around ``x``, then clip to [0, 1] (which stays in the ball)."""
    return (x + project(xp - x, eps, norm)).clamp(0.0, 1.0)


def _grad_norm(model, xp, y, loss_fn, q, create_graph):
    """Per-sample ``||grad_x' l(x', y)||_q`` (differentiable w.r.t. ``x'`` when ``create_graph``)."""
    xp = xp.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = per_sample_loss(loss_fn, check_logits(model(xp), y), y)
        if not losses.requires_grad:  # the loss does not depend on the inputs
            return xp, torch.zeros(y.shape[0], dtype=xp.dtype, device=xp.device)
        (g,) = torch.autograd.grad(losses.sum(), xp, create_graph=create_graph, allow_unused=True)
        if g is None:
            return xp, torch.zeros(y.shape[0], dtype=xp.dtype, device=xp.device)
        return xp, _per_sample_norm(g, q)


def _ascent(model, x, y, *, eps, norm, q, steps, step_size, random_start, generator, loss_fn):
    """The maximiser; returns ``(x_best, best_norms, norms_at_x)``."""
    x = x.detach()
    step = 2.5 * eps / steps if step_size is None and steps > 0 else (step_size or 0.0)
    _, at_x = _grad_norm(model, x, y, loss_fn, q, create_graph=False)
    best_x, best = x.clone(), at_x.detach().clone()
    view = (-1,) + (1,) * (x.dim() - 1)

    def keep(xp, norms):
        nonlocal best_x, best
        better = norms > best
        best = torch.where(better, norms, best)
        best_x = torch.where(better.view(view), xp.detach(), best_x)

    xp = x
    if random_start and eps > 0:
        xp = _project(x + random_start_point(x, START_FRACTION * eps, norm, generator), x, eps, norm)
    if eps == 0:
        return best_x, best, at_x.detach()
    for k in range(steps + 1):
        last = k == steps
        xp_req, norms = _grad_norm(model, xp, y, loss_fn, q, create_graph=not last)
        keep(xp, norms.detach())
        if last:
            break
        direction = None
        if norms.requires_grad:
            with torch.enable_grad():
                (direction,) = torch.autograd.grad(norms.sum(), xp_req, allow_unused=True)
        if direction is None:  # the gradient norm is constant in x': no ascent direction
            break
        xp = _project(xp + ascent_step(direction.detach(), step, norm), x, eps, norm)
    return best_x, best, at_x.detach()


def max_gradient_norm_point(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    q: float | str = 1,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The point of the ``eps``-ball around each sample where ``||grad_x l||_q`` is largest (found by ascent).

    Works on one batch in whatever mode the model is in (train mode included: the LFR trainer
    calls it), and leaves no gradients on the parameters. ``x`` must be images in [0, 1]
    (``x``'s dtype and device are used as given). ``step_size`` defaults to ``2.5 * eps / steps``;
    the random start (``random_start``) lies within ``0.1 * eps`` of ``x`` and is drawn from
    ``generator`` (``None``: torch's global generator, as training loops and attacks expect).
    Returns ``(x_best, best_norms)``: detached points in the ball and in [0, 1], and the largest
    per-sample gradient norms seen, including the norm at ``x`` itself.
    """
    q = _check_settings(eps, norm, q, steps, step_size)
    check_inputs(x, name="x", unit_range=True)
    check_labels(y, x.shape[0], name="y")
    x_best, best, _ = _ascent(model, x, y, eps=float(eps), norm=norm, q=q, steps=steps, step_size=step_size,
                              random_start=random_start, generator=generator, loss_fn=resolve_loss(loss_fn))
    return x_best, best


def local_flatness(
    model: nn.Module,
    data: Batch,
    *,
    eps: float,
    norm: str = "linf",
    q: float | str = 1,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    quiet: bool = False,
) -> Measurement:
    """Mean local flatness ``LF(x)`` of Xu et al. 2020 over ``data`` (images in [0, 1]).

    ``eps``/``norm`` (``"linf"`` or ``"l2"``): the input ball; ``q`` (1, 2 or inf): the order of the
    gradient norm (q=1 pairs with linf attacks, being the dual norm); ``steps``/``step_size``: the
    ascent. ``per_sample`` holds ``LF`` per sample; ``details`` the settings and
    ``grad_norm_at_x``, the mean gradient norm at the clean inputs.
    """
    start = time.perf_counter()
    qf = _check_settings(eps, norm, q, steps, step_size)
    if not isinstance(seed, int):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
    loss_fn = resolve_loss(loss_fn)
    batches = Batches(data, unit_range=True)
    device, dtype = model_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    lf, at_x = [], []
    with preserved(model):
        for x, y in progress(batches.to(device, dtype), desc="local flatness", quiet=quiet):
            _, best, norms0 = _ascent(model, x, y, eps=float(eps), norm=norm, q=qf, steps=steps,
                                      step_size=step_size, random_start=random_start, generator=generator,
                                      loss_fn=loss_fn)
            lf.append(best.detach().to(torch.float64).cpu())
            at_x.append(norms0.to(torch.float64).cpu())
    per_sample = torch.cat(lf)
    at_x_all = torch.cat(at_x)
    return Measurement(
        name="local_flatness",
        value=float(per_sample.mean()),
        per_sample=per_sample,
        details={
            "eps": float(eps),
            "norm": norm,
            "q": "inf" if qf == math.inf else int(qf),
            "steps": steps,
            "step_size": float(step_size) if step_size is not None else (2.5 * float(eps) / steps if steps else 0.0),
            "random_start": bool(random_start),
            "seed": seed,
            "grad_norm_at_x": float(at_x_all.mean()),
        },
        seconds=time.perf_counter() - start,
    )


INFO = MeasureInfo(
    version="1",
    paper="Xu et al. 2020, Adversarial Defense via Local Flatness Regularization, https://arxiv.org/abs/1910.12165",
    default=True,
    zoo_defaults={"steps": 10},
    follows_attack=("eps", "norm"),
)
