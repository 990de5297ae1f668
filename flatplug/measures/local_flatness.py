"""Local flatness in input space (Xu et al. 2020, "Adversarial Defense via Local Flatness
Regularization", ICIP 2020, https://arxiv.org/abs/1910.12165).

For a sample ``(x, y)`` and the ball ``B = {x' : ||x' - x||_p <= eps, x' in [0, 1]}``:

    LF(x) = max_{x' in B} ||grad_{x'} l(x', y)||_q,    q the dual norm of p by default

(``q=None``: 1 for ``norm="linf"``, 2 for ``norm="l2"``). With the dual norm, Hoelder's
inequality and the mean-value theorem give the paper's first-order bound: for every ``delta``
with ``x + delta`` in ``B``, ``l(x + delta) - l(x) <= eps * LF(x)``; a small ``LF`` means no
attack inside the ball can raise the loss by much.

What is computed, exactly:

* ``l`` is the per-sample loss (softmax cross-entropy unless ``loss_fn`` is given) and the
  gradient is that sample's own gradient: the model runs in eval mode (the measure puts it there),
  so no sample's value depends on the rest of its batch (batch norm uses its running statistics).
* The maximum is found by projected ascent on the gradient norm itself, differentiated by double
  backpropagation (``create_graph=True``, then the gradient of the norm w.r.t. ``x'``): sign
  steps for linf, normalised-gradient steps for l2, each followed by projection onto the ball and
  clipping to [0, 1]. ``steps`` steps of ``step_size`` (default ``2.5 * eps / steps``), from a
  random start within ``0.1 * eps`` of ``x`` (``random_start=True``).
* The measure (and :func:`max_gradient_norm_point`) keeps, per sample, the largest norm seen,
  ``x`` itself included, so ``LF(x) >= ||grad_x l(x, y)||_q`` always. An ascent finds a lower
  bound of the true maximum: more steps can only raise it.

The official code (github.com/Uooga/Local-Flatness-Regularization, ``loss_function/LFR_loss.py``)
runs the same sign ascent on ``mean_i ||grad_x' l_i||_1`` (L-inf only, q = 1) in eval mode, from a
Gaussian start of standard deviation 0.001, with a fixed step (0.01 x 40 steps at eps 0.3 on
MNIST; 0.007 x 7-10 steps at eps 0.031 on CIFAR-10), and uses the last iterate, not the best
one seen. :func:`ascent_point` is that last-iterate ascent (the LFR training method's inner
maximisation); :func:`max_gradient_norm_point` the best-seen one (the measure's, and the
torchattacks ``LocalFlatnessPGD``'s).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

from .._data import Batches, cpu_channels_last, model_device_dtype
from .._loss import LossFn, per_sample_loss, resolve_loss
from .._progress import progress
from .._second_order import second_order_layers
from .._state import preserved
from .._validation import check_choice, check_inputs, check_labels, check_logits
from ..attacks import ascent_step, project
from ..attacks import random_start_delta as random_start_point
from ..registry import MeasureInfo
from ..types import Batch, Measurement

NORMS = ("l2", "linf")

#: the gradient norm paired with each ball by default: the dual norm (Hoelder)
DUAL = {"linf": 1.0, "l2": 2.0}

#: the random start lies within this fraction of eps of x
START_FRACTION = 0.1

#: the default number of ascent steps (the measure's and the LFR training method's)
STEPS = 10


def resolve_q(q: float | str | None, norm: str) -> float:
    """The gradient norm's order as a float (1, 2 or inf); ``None`` is the dual norm of ``norm``'s ball."""
    if q is None:
        return DUAL[norm]
    if isinstance(q, str) and q.lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(q, bool) or not isinstance(q, (int, float)) or float(q) not in (1.0, 2.0, math.inf):
        raise ValueError(f"q: expected the gradient norm's order 1, 2 or float('inf'), or None for the dual norm "
                         f"of the ball (1 for linf, 2 for l2), got {q!r}")
    return float(q)


def check_settings(eps: float, norm: str, q: float | str | None, steps: int, step_size: float | None) -> float:
    """Validate the shared settings (measure, maximisers, LFR training); returns ``q`` as a float."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a non-negative finite radius (e.g. 8/255 for linf), got {eps!r}")
    check_choice(norm, "norm", NORMS)
    if norm == "linf" and eps > 1:
        raise ValueError(f"eps: {eps:g} is larger than the whole [0, 1] range of the images for an L-inf ball; "
                         f"radii are fractions of the pixel range, e.g. {eps:g}/255 (8/255 is the usual CIFAR-10 radius)")
    q = resolve_q(q, norm)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer number of ascent steps, got {steps!r}")
    if step_size is not None and (
        isinstance(step_size, bool) or not isinstance(step_size, (int, float))
        or not math.isfinite(step_size) or step_size <= 0
    ):
        raise ValueError(f"step_size: expected a positive finite number (or None for 2.5 * eps / steps), got {step_size!r}")
    return q


def q_label(q: float) -> int | str:
    """``q`` as recorded in details and settings: 1, 2 or ``"inf"``."""
    return "inf" if q == math.inf else int(q)


def per_sample_norm(t: torch.Tensor, order: float) -> torch.Tensor:
    """``||t_i||_order`` of each sample's flattened slice."""
    flat = t.reshape(t.shape[0], -1)
    if order == math.inf:
        return flat.abs().amax(1)
    if order == 1.0:
        return flat.abs().sum(1)
    return flat.pow(2).sum(1).sqrt()


def _project(xp: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ``eps``-ball around ``x``, then clip to [0, 1] (which stays in the ball)."""
    return (x + project(xp - x, eps, norm)).clamp(0.0, 1.0)


@contextmanager
def inputs_only(model) -> Iterator[None]:
    """Parameters stop requiring grad inside the block (restored after).

    The ascent differentiates w.r.t. the inputs only; with frozen weights autograd neither saves
    what weight gradients would need nor builds their double-backward graph (about 10% of an
    inner step on a ResNet). Plain callables (e.g. torchattacks' ``get_logits``) are left as they are.
    """
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def gradient_norms(model, xp: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, q: float,
                   create_graph: bool, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x', ||grad_x' l(x', y)||_q)`` per sample; differentiable w.r.t. ``x'`` (and the weights that
    require grad) when ``create_graph``. The gradient is of the sum of per-sample losses, so each
    row is that sample's own gradient whenever samples do not interact (eval mode). ``check``:
    validate the logits against the labels (skipped on repeat calls for the same batch: it reads
    the labels back from the device).

    With ``create_graph`` the model's convolutions and eval-mode BatchNorm layers record their
    gradients with :func:`flatplug._second_order.second_order_layers` (the same values up to float
    rounding): stock autograd differentiates a recorded input gradient with
    ``_convolution_double_backward``, which runs an extra convolution over transposed feature maps
    per layer even when the weights are frozen (the ascent's case), and its BatchNorm double
    backward hands channels_last convolutions NCHW tensors. On ``resnet4b`` (CPU, one thread) an
    inner ascent step takes 0.79x the stock graph's time, and an LFR training step went from 1.06x
    to 0.66x the official algorithm's (``benchmarks/training_steps.py --breakdown``);
    ``local_flatness`` on a WideResNet-16-4 in eval mode (32 images) takes 0.8-0.9x the time it
    takes with the BatchNorm layers stock (``benchmarks/batchnorm_graph.py``)."""
    xp = xp.detach().requires_grad_(True)
    zeros = torch.zeros(y.shape[0], dtype=xp.dtype, device=xp.device)
    switch = second_order_layers(model) if create_graph and isinstance(model, nn.Module) else nullcontext()
    with torch.enable_grad(), switch:
        logits = model(xp)
        losses = per_sample_loss(loss_fn, check_logits(logits, y) if check else logits, y)
        if not losses.requires_grad:  # the loss does not depend on the inputs
            return xp, zeros
        (g,) = torch.autograd.grad(losses.sum(), xp, create_graph=create_graph, allow_unused=True)
        if g is None:
            return xp, zeros
        return xp, per_sample_norm(g, q)


def _step_length(eps: float, steps: int, step_size: float | None) -> float:
    if step_size is not None:
        return float(step_size)
    return 2.5 * eps / steps if steps > 0 else 0.0


def _ascend(model, x, y, *, eps, norm, q, steps, step_size, random_start, generator, loss_fn, keep_best):
    """The sign / normalised ascent on ``||grad_x' l||_q``.

    ``keep_best``: returns ``(best_x, best_norms, norms_at_x)`` over every point evaluated, ``x``
    included (one gradient at ``x`` and one at the last iterate beyond the ``steps`` double
    backward steps). Otherwise ``(last_iterate, None, None)``: exactly ``steps`` double backward
    steps and nothing else (the training method's inner maximisation).
    """
    x = x.detach()
    step = _step_length(eps, steps, step_size)
    view = (-1,) + (1,) * (x.dim() - 1)
    xp = x
    if random_start and eps > 0:
        xp = _project(x + random_start_point(x, START_FRACTION * eps, norm, generator), x, eps, norm)
    best_x = best = at_x = None
    checked = False
    if keep_best and (xp is not x or steps == 0 or eps == 0):  # else x is the first point the loop evaluates
        _, at_x = gradient_norms(model, x, y, loss_fn, q, create_graph=False)
        best_x, best, checked = x, at_x.detach(), True
    if eps == 0:
        return (x, best, best) if keep_best else (x, None, None)

    def keep(point, norms):
        nonlocal best_x, best, at_x
        norms = norms.detach()
        if best is None:
            best_x, best, at_x = point, norms, norms
            return
        better = norms > best
        best = torch.where(better, norms, best)
        best_x = torch.where(better.view(view), point, best_x)

    for _ in range(steps):
        xp_req, norms = gradient_norms(model, xp, y, loss_fn, q, create_graph=True, check=not checked)
        checked = True
        if keep_best:
            keep(xp, norms)
        if not norms.requires_grad:  # the gradient norm is constant in x': no ascent direction
            break
        (direction,) = torch.autograd.grad(norms.sum(), xp_req, allow_unused=True)
        del norms, xp_req  # free the double-backward graph before the next forward pass
        if direction is None:
            break
        xp = _project(xp + ascent_step(direction, step, norm), x, eps, norm)
    else:
        if keep_best and steps > 0:
            _, norms = gradient_norms(model, xp, y, loss_fn, q, create_graph=False, check=False)
            keep(xp, norms)
    if not keep_best:
        return xp.detach(), None, None
    return best_x.detach(), best, at_x


def _checked_ascent(model, x, y, *, eps, norm, q, steps, step_size, random_start, generator, loss_fn, keep_best):
    """:func:`_ascend` on one batch after checking the settings and inputs, with the weights frozen."""
    q = check_settings(eps, norm, q, steps, step_size)
    check_inputs(x, name="x", unit_range=True)
    check_labels(y, x.shape[0], name="y")
    fast = x.is_contiguous() and cpu_channels_last(model, x)
    with inputs_only(model):
        point, best, at_x = _ascend(model, x.contiguous(memory_format=torch.channels_last) if fast else x, y,
                                    eps=float(eps), norm=norm, q=q, steps=steps, step_size=step_size,
                                    random_start=random_start, generator=generator, loss_fn=resolve_loss(loss_fn),
                                    keep_best=keep_best)
    # the double backward steps run channels_last on a CPU (faster); the point keeps the caller's layout
    return (point.contiguous() if fast else point), best, at_x


def ascent_point(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    q: float | str | None = None,
    steps: int = STEPS,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """The last iterate of ``steps`` ascent steps on ``||grad_x' l(x', y)||_q`` in the ``eps``-ball.

    The LFR training method's inner maximisation, the algorithm of the official code: exactly
    ``steps`` double-backward steps, no extra gradient at ``x`` or at the last point (so no
    best-seen bookkeeping). Runs in whatever mode the model is in (LFR calls it in eval mode),
    with the weights' ``requires_grad`` off for the duration; leaves no parameter gradients.
    Returns detached points in the ball and in [0, 1].
    """
    point, _, _ = _checked_ascent(model, x, y, eps=eps, norm=norm, q=q, steps=steps, step_size=step_size,
                                  random_start=random_start, generator=generator, loss_fn=loss_fn, keep_best=False)
    return point


def max_gradient_norm_point(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    q: float | str | None = None,
    steps: int = STEPS,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The point of the ``eps``-ball around each sample where ``||grad_x l||_q`` is largest (found by ascent).

    ``q=None``: the dual norm of the ball (1 for linf, 2 for l2). Works on one batch in whatever
    mode the model is in, and leaves no gradients on the parameters. ``x`` must be images in
    [0, 1] (``x``'s dtype and device are used as given). ``step_size`` defaults to
    ``2.5 * eps / steps``; the random start (``random_start``) lies within ``0.1 * eps`` of ``x``
    and is drawn from ``generator`` (``None``: torch's global generator, as training loops and
    attacks expect). Returns ``(x_best, best_norms)``: detached points in the ball and in [0, 1],
    and the largest per-sample gradient norms seen, including the norm at ``x`` itself.
    """
    x_best, best, _ = _checked_ascent(model, x, y, eps=eps, norm=norm, q=q, steps=steps, step_size=step_size,
                                      random_start=random_start, generator=generator, loss_fn=loss_fn, keep_best=True)
    return x_best, best


def check_params(*, eps: float, norm: str, q: float | str | None, steps: int, step_size: float | None, seed: int,
                 loss_fn: LossFn | None) -> None:
    """Refuse bad settings before any model or data is touched (scoring calls this before any work)."""
    check_settings(eps, norm, q, steps, step_size)
    if not isinstance(seed, int):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
    resolve_loss(loss_fn)


def local_flatness(
    model: nn.Module,
    data: Batch,
    *,
    eps: float,
    norm: str = "linf",
    q: float | str | None = None,
    steps: int = STEPS,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    quiet: bool = False,
) -> Measurement:
    """Mean local flatness ``LF(x)`` of Xu et al. 2020 over ``data`` (images in [0, 1]).

    ``eps``/``norm`` (``"linf"`` or ``"l2"``): the input ball; ``q`` (1, 2 or inf; ``None``, the
    default: the dual norm of the ball, 1 for linf and 2 for l2, which makes ``eps * LF`` bound the
    loss increase of any attack in the ball); ``steps``/``step_size``: the ascent. Eval mode: each
    sample's value is its own, whatever else is in its batch. ``per_sample`` holds ``LF`` per
    sample (the best norm seen, never below the norm at ``x``); ``details`` the settings (``q``
    resolved) and ``grad_norm_at_x``, the mean gradient norm at the clean inputs.
    """
    start = time.perf_counter()
    check_params(eps=eps, norm=norm, q=q, steps=steps, step_size=step_size, seed=seed, loss_fn=loss_fn)
    qf = resolve_q(q, norm)
    loss_fn = resolve_loss(loss_fn)
    batches = Batches(data, unit_range=True)
    device, dtype = model_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    lf, at_x = [], []
    with preserved(model), inputs_only(model):
        for x, y in progress(batches.to(device, dtype), desc="local flatness", quiet=quiet):
            _, best, norms0 = _ascend(model, x, y, eps=float(eps), norm=norm, q=qf, steps=steps,
                                      step_size=step_size, random_start=random_start, generator=generator,
                                      loss_fn=loss_fn, keep_best=True)
            lf.append(best.to(torch.float64).cpu())
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
            "q": q_label(qf),
            "steps": steps,
            "step_size": _step_length(float(eps), steps, step_size),
            "random_start": bool(random_start),
            "seed": seed,
            "grad_norm_at_x": float(at_x_all.mean()),
        },
        seconds=time.perf_counter() - start,
    )


#: version 2: q defaults to the dual norm of the ball (an l2 ball now gives q = 2, was 1)
INFO = MeasureInfo(
    version="2",
    paper="Xu et al. 2020, Adversarial Defense via Local Flatness Regularization, https://arxiv.org/abs/1910.12165",
    default=True,
    zoo_defaults={"steps": STEPS},
    follows_attack=("eps", "norm"),
    check=check_params,
)
