"""Loss landscapes: the loss along 1 or 2 directions around the model (Li et al. 2018).

``space="weights"`` (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): random
Gaussian directions ``d1`` (and ``d2``) in parameter space, evaluated at ``w + a d1 (+ b d2)``.
With ``normalization="filter"`` every filter of a direction (a slice along dim 0 of a parameter
with more than one dimension) is rescaled to the norm of the matching filter of the weights,
which makes plots of networks with different weight scales comparable; ``"layer"`` rescales
each tensor as a whole to the weights' norm; ``"none"`` keeps the raw Gaussian draw.
Biases and norm-layer parameters (tensors with at most one dimension) get a zero direction
(Li et al.'s ``ignore="biasbn"``) unless ``include_bias_and_norm``, in which case their direction
is the parameter itself, whatever the ``normalization`` (Li et al.'s code, ``net_plotter.py``:
``d.copy_(w)``, so ``w + a d`` scales them by ``1 + a``). The model is evaluated in eval mode:
BatchNorm uses its running statistics, which are not perturbed (Li et al.'s ``dir_type="weights"``).

``space="inputs"``: a direction per sample in input space, ``x + a d1 (+ b d2)`` clamped to
[0, 1]; ``direction="random"`` draws Rademacher signs (``||d||_inf = 1``, so ``a`` is an L-inf
radius), ``direction="gradient"`` takes the sign of the input gradient of the loss (FGSM's
direction) for ``d1``, with a Rademacher ``d2`` for a 2-D grid.

``adversarial={eps, norm, steps, step_size, random_start, clip, seed}`` (weight space only): the
robust-loss landscape of Stutz et al. 2021 ("Relating Adversarially Robust Generalization to
Flat Minima", https://arxiv.org/abs/2104.04448) and Yamada et al. 2021 (https://arxiv.org/abs/2102.02950):
at every grid point the adversarial examples are re-optimised by PGD against the perturbed
weights, so ``losses`` is ``mean_i max_{||d_i|| <= eps} loss(f(x_i + d_i; w + a d1), y_i)`` (as far
as PGD finds the maximum) and ``accuracies`` the robust accuracy. ``clip=None`` leaves the
inputs unconstrained (needed for the analysis of linear models); the default keeps them in [0, 1].

The grid has ``steps`` points per direction, evenly spaced in [-span, span], with 0 in the
middle (``steps`` must be odd). ``value`` is the mean over the grid of ``loss - centre_loss``:
the average rise of the loss around the model, large for sharp landscapes.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from torch import nn

from .._data import Batches, model_device_dtype
from .._loss import LossFn, per_sample_loss, resolve_loss
from .._perturb import adversarial_attack, data_loss, random_like, set_weights
from .._progress import progress
from .._state import preserved
from .._validation import check_choice, check_logits, check_positive
from ..registry import MeasureInfo
from ..types import Batch, Measurement

NORMALIZATIONS = ("filter", "layer", "none")
SPACES = ("weights", "inputs")
DIRECTIONS = ("random", "gradient")
_TINY = 1e-10


def grid(steps: int, span: float) -> list[float]:
    """``steps`` evenly spaced values in [-span, span]; the middle one is exactly 0."""
    m = (steps - 1) // 2
    return [span * (i - m) / m for i in range(steps)]


def _norm(t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """l2 norm accumulated in float64 (a CPU float32 norm of a WideResNet layer is off by 1e-4)."""
    return torch.linalg.vector_norm(t, dim=dim, keepdim=dim is not None, dtype=torch.float64)


def _scaled_to(direction: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``direction`` rescaled to the norm of ``weight`` (norms taken over whole tensors)."""
    return direction * (_norm(weight) / (_norm(direction) + _TINY)).to(direction.dtype)


def normalize_direction(
    direction: torch.Tensor, weight: torch.Tensor, normalization: str, include_bias_and_norm: bool
) -> torch.Tensor:
    """Rescale one parameter's direction the way Li et al. 2018 do (see the module docstring)."""
    if weight.dim() <= 1:
        if not include_bias_and_norm:
            return torch.zeros_like(direction)
        return weight.detach().to(direction.dtype).clone()
    if normalization == "filter":
        d = direction.reshape(direction.shape[0], -1)
        w = weight.reshape(weight.shape[0], -1)
        scale = _norm(w, 1) / (_norm(d, 1) + _TINY)
        return (d * scale.to(d.dtype)).reshape(direction.shape)
    if normalization == "layer":
        return _scaled_to(direction, weight)
    return direction


def check_params(*, directions: int, steps: int, span: float, normalization: str, space: str, direction: str,
                 seed: int, adversarial: Mapping[str, Any] | None, loss_fn: LossFn | None) -> None:
    """Refuse bad settings before any model or data is touched (scoring calls this before any work)."""
    if isinstance(directions, bool) or directions not in (1, 2):
        raise ValueError(f"directions: expected 1 (a curve) or 2 (a surface), got {directions!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 3 or steps % 2 == 0:
        raise ValueError(
            f"steps: expected an odd integer >= 3 so that the grid has the unperturbed model at its centre, "
            f"got {steps!r}"
        )
    check_positive(span, "span")
    check_choice(normalization, "normalization", NORMALIZATIONS)
    check_choice(space, "space", SPACES)
    check_choice(direction, "direction", DIRECTIONS)
    if space == "weights" and direction != "random":
        raise ValueError(
            f"direction: {direction!r} applies to space='inputs'; weight-space landscapes use random directions"
        )
    if not isinstance(seed, int):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
    if adversarial is not None and space != "weights":
        raise ValueError("adversarial: robust-loss landscapes are defined in weight space; use space='weights'")
    adversarial_attack(adversarial, resolve_loss(loss_fn))


def loss_landscape(
    model: nn.Module,
    data: Batch,
    *,
    directions: int = 1,
    steps: int = 21,
    span: float = 1.0,
    normalization: str = "filter",
    space: str = "weights",
    direction: str = "random",
    include_bias_and_norm: bool = False,
    seed: int = 0,
    adversarial: Mapping[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    quiet: bool = False,
) -> Measurement:
    """Mean loss and accuracy on a 1-D or 2-D grid around the model, in weight or input space.

    Li et al. 2018, https://arxiv.org/abs/1712.09913; with ``adversarial`` the robust loss, the
    attack re-run at every grid point (Stutz et al. 2021, https://arxiv.org/abs/2104.04448).

    ``directions``: 1 (a curve) or 2 (a surface). ``steps``: odd number of grid points per
    direction, spread over [-span, span]. ``normalization`` and ``include_bias_and_norm`` apply to
    ``space="weights"``; ``direction`` (``"random"`` or ``"gradient"``) to ``space="inputs"``, whose
    inputs must be images in [0, 1]. ``details``: ``alphas`` (and ``betas``), ``losses`` and
    ``accuracies`` (lists, or ``losses[i][j]`` at ``(alphas[i], betas[j])``), ``centre_loss`` and the
    settings; ``value`` is the mean of ``losses - centre_loss`` over the grid. For weight space
    ``artifacts["directions"]`` holds the directions used (``{name: tensor}`` per direction).
    """
    start = time.perf_counter()
    check_params(directions=directions, steps=steps, span=span, normalization=normalization, space=space,
                 direction=direction, seed=seed, adversarial=adversarial, loss_fn=loss_fn)
    loss_fn = resolve_loss(loss_fn)
    attack, adv_settings = adversarial_attack(adversarial, loss_fn)
    generator = torch.Generator().manual_seed(seed)
    alphas = grid(steps, float(span))
    betas = grid(steps, float(span)) if directions == 2 else [0.0]
    points = [(i, j) for i in range(len(alphas)) for j in range(len(betas))]
    losses = [[0.0] * len(betas) for _ in alphas]
    accs = [[0.0] * len(betas) for _ in alphas]
    artifacts: dict = {}

    if space == "weights":
        batches = Batches(data)
        with preserved(model, weights=True):
            named = list(model.named_parameters())
            ps = [p for _, p in named]
            base = [p.detach().clone() for p in ps]
            dirs = []
            for _ in range(directions):
                raw = random_like(ps, generator, "normal")
                dirs.append([normalize_direction(r, b, normalization, include_bias_and_norm) for r, b in zip(raw, base)])
            try:
                for i, j in progress(points, desc="loss landscape", quiet=quiet):
                    offsets = [(alphas[i], dirs[0])] + ([(betas[j], dirs[1])] if directions == 2 else [])
                    set_weights(ps, base, *offsets)
                    losses[i][j], accs[i][j], _ = data_loss(model, batches, loss_fn, attack=attack)
            finally:
                set_weights(ps, base)
        artifacts["directions"] = [{n: d for (n, _), d in zip(named, ds)} for ds in dirs]
    else:
        batches = Batches(data, unit_range=True)
        _input_grid(model, batches, loss_fn, alphas, betas, directions, direction, generator, losses, accs, quiet)

    m = (steps - 1) // 2
    centre = losses[m][m if directions == 2 else 0]
    flat = [v for row in losses for v in row]
    details = {
        "alphas": alphas,
        "losses": losses if directions == 2 else [row[0] for row in losses],
        "accuracies": accs if directions == 2 else [row[0] for row in accs],
        "centre_loss": centre,
        "centre_accuracy": accs[m][m if directions == 2 else 0],
        "settings": {
            "directions": directions,
            "steps": steps,
            "span": float(span),
            "space": space,
            "normalization": normalization if space == "weights" else None,
            "include_bias_and_norm": bool(include_bias_and_norm) if space == "weights" else None,
            "direction": direction,
            "seed": seed,
            "adversarial": adv_settings,
        },
    }
    if directions == 2:
        details["betas"] = betas
    return Measurement(
        name="loss_landscape",
        value=float(sum(v - centre for v in flat) / len(flat)),
        per_sample=None,
        details=details,
        seconds=time.perf_counter() - start,
        artifacts=artifacts,
    )


def _input_grid(model, batches, loss_fn, alphas, betas, directions, direction, generator, losses, accs, quiet):
    """One pass over the data: per batch, draw the directions, then evaluate every grid point."""
    device, dtype = model_device_dtype(model)
    sums = torch.zeros(len(alphas), len(betas), dtype=torch.float64)
    correct = torch.zeros(len(alphas), len(betas), dtype=torch.float64)
    count = 0
    with preserved(model):
        for x, y in progress(batches.to(device, dtype), desc="loss landscape (inputs)", quiet=quiet):
            if direction == "gradient":
                xg = x.detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    out = per_sample_loss(loss_fn, check_logits(model(xg), y), y)
                    if out.requires_grad:
                        (g,) = torch.autograd.grad(out.sum(), xg, allow_unused=True)
                    else:
                        g = None
                d1 = torch.zeros_like(x) if g is None else torch.sign(g)
            else:
                d1 = random_like([x], generator, "sign")[0]
            d2 = random_like([x], generator, "sign")[0] if directions == 2 else None
            with torch.no_grad():
                for i, a in enumerate(alphas):
                    for j, b in enumerate(betas):
                        xp = x + a * d1 if a != 0.0 else x
                        if d2 is not None and b != 0.0:
                            xp = xp + b * d2
                        xp = xp.clamp(0.0, 1.0)
                        logits = check_logits(model(xp), y)
                        sums[i, j] += per_sample_loss(loss_fn, logits, y).to(torch.float64).sum().cpu()
                        correct[i, j] += (logits.argmax(1) == y).sum().cpu().to(torch.float64)
            count += y.shape[0]
    for i in range(len(alphas)):
        for j in range(len(betas)):
            losses[i][j] = float(sums[i, j] / count)
            accs[i][j] = float(correct[i, j] / count)


INFO = MeasureInfo(
    version="2",  # 2: with include_bias_and_norm, 1-D parameters' direction is the parameter (Li et al.)
    paper="Li et al. 2018, Visualizing the Loss Landscape of Neural Nets, https://arxiv.org/abs/1712.09913",
    zoo_defaults={"steps": 21, "span": 1.0},
    check=check_params,
)
