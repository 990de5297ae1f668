"""Feature robustness (Petzka et al. 2021): the loss change when the penultimate features move.

Petzka et al. 2021 ("Relative Flatness and Generalization", https://arxiv.org/abs/2001.00939)
split a model into features ``phi`` and a last layer ``z = W phi + b`` and perturb the features
multiplicatively, ``phi -> phi + delta A phi``. Feature robustness is the mean loss change

    E_F(delta A) = mean_i [loss(W (phi_i + delta A phi_i) + b, y_i) - loss(W phi_i + b, y_i)].

Since ``W (phi + delta A phi) = (W + delta W A) phi`` it is a weight perturbation of the last
layer, and its second-order term is ``delta^2 / 2 mean_i (W A phi_i)^T G_i (W A phi_i)`` (``G_i``:
the Hessian of the loss w.r.t. the logits). Averaged over orthogonal ``A`` drawn uniformly (Haar),
``E[A phi phi^T A^T] = ||phi||^2 / m I`` (``m`` features), so the second-order term is exactly
``delta^2 / (2 m) kappa_Tr`` with kappa_Tr the relative flatness of the last layer, and the
first-order term averages to zero: the paper's link between flatness and feature robustness
on average over orthogonal matrices. An orthogonal ``A`` moves every feature vector by exactly
``delta ||phi||``, so ``delta`` is the relative feature displacement.

Computed here, on the features of ``data`` (eval mode):

* ``value`` (``details["random"]``): E_F averaged over ``samples`` Haar-orthogonal ``A``, each used
  with ``+A`` and ``-A`` (antithetic, so every odd-order term cancels exactly in the estimate);
  ``per_sample`` the same per sample, ``details["random_std_error"]`` its Monte-Carlo error;
* ``details["worst"]``: ``max E_F(delta A)`` over ``||A||_2 <= 1`` (one ``A`` for all samples),
  by projected gradient ascent from the first-order maximiser (singular values clipped to 1),
  the random draws included as candidates: a lower bound on the maximum. For a loss convex in
  the logits the maximum is attained at an orthogonal matrix (an extreme point of the ball);
* ``details["predicted"]`` = ``delta^2 / (2 m) kappa_Tr``, the flatness prediction for ``random``;
  ``details["second_order"]``: the exact second-order term for the drawn matrices (the two differ
  only by Monte-Carlo error); ``details["bound_at_minimum"]`` = ``delta^2 / 2 kappa_Tr``, which
  bounds the worst case's second-order term at a minimum of the loss w.r.t. ``W``;
  ``details["first_order_worst"]`` = ``delta ||W^T grad_W L||_*`` (nuclear norm), the worst case's
  first-order term, zero only at a critical point;
* ``details["curve"]``: all of these over ``grid`` (default ``delta * 2**-k``, ``k = 6 .. 0``), so
  a user sees where flatness predicts the loss change (small delta) and where it stops.

Everything after the model's forward pass is computed in float64 from its features: the loss
differences of a small ``delta`` cancel in float32 (on a float32 MNIST network at ``delta = 1e-4``
the value came out 6.1x the float64 one, 36 standard errors off: ``notes/audit_figures.py``).
The worst case's ascent takes steps as long as the ball's radius and is not converged for
``delta`` of about 1 and more: there it is a lower bound that longer searches raise (by up to 18%
at ``delta = 2`` in an ad hoc audit; within 0.1% for ``delta <= 0.1``).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._loss import LossFn, cross_entropy, per_sample_loss, resolve_loss
from .._state import preserved
from .._validation import check_positive
from ..features import features_and_logits, find_layer
from ..registry import ForwardPass, MeasureInfo
from ..types import Measurement
from .relative_flatness import block_traces, pairwise_from_logit_hessians

__all__ = ["feature_robustness", "from_features", "haar_orthogonal", "logit_hessians"]


def haar_orthogonal(m: int, generator: torch.Generator, dtype: torch.dtype = torch.float64,
                    count: int = 1) -> torch.Tensor:
    """``count`` orthogonal ``m x m`` matrices drawn uniformly (Haar), ``[count, m, m]``: QR of Gaussian
    matrices, each column's sign fixed by ``R``'s diagonal (Mezzadri 2007)."""
    q, r = torch.linalg.qr(torch.randn(count, m, m, generator=generator, dtype=dtype))
    signs = torch.diagonal(r, dim1=-2, dim2=-1).sign()
    return q * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None, :]


def logit_hessians(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                   loss_fn: LossFn) -> torch.Tensor:
    """Per sample, the Hessian ``G`` of the loss w.r.t. the logits, ``[N, K, K]``.

    Cross-entropy: ``diag(p) - p p^T``; another loss: from the penultimate-weight block traces,
    ``G_ss' = Tr(H_ss') / ||phi||^2`` (zero where ``phi = 0``, where ``G`` does not enter).
    """
    if loss_fn is cross_entropy:
        p = torch.softmax(F.linear(phi, weight, bias), 1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    sq = phi.pow(2).sum(1)
    traces = block_traces(phi, weight, bias, y, loss_fn)
    return torch.where(sq[:, None, None] > 0, traces / sq.clamp_min(torch.finfo(phi.dtype).tiny)[:, None, None],
                       torch.zeros_like(traces))


def _losses(z: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    """Per-sample losses of logits ``[..., N, K]`` (one call of ``loss_fn`` for all leading entries)."""
    flat = z.reshape(-1, z.shape[-1])
    return per_sample_loss(loss_fn, flat, y.repeat(flat.shape[0] // y.shape[0])).reshape(z.shape[:-1])


def _worst(phi, z, y, weight, delta, loss_fn, base, start, candidates, steps):
    """Projected gradient ascent of ``mean loss(z + delta phi A^T W^T) - base`` over ``||A||_2 <= 1``."""
    best = max(candidates) if candidates else -math.inf
    a = start.clone()
    for step in range(steps + 1):
        a.requires_grad_(True)
        with torch.enable_grad():
            change = (_losses(z + delta * (phi @ a.T) @ weight.T, y, loss_fn) - base).mean()
            last = step == steps
            grad = None if last or not change.requires_grad else torch.autograd.grad(change, a)[0]
        best = max(best, float(change.detach()))
        if grad is None:
            break
        size = torch.linalg.matrix_norm(grad, ord=2)
        if float(size) == 0.0:
            break
        u, s, vh = torch.linalg.svd(a.detach() + grad / size)
        a = (u * s.clamp(max=1.0)) @ vh  # the projection onto the spectral-norm ball
    return best


def check_params(*, delta: float, samples: int, steps: int, grid: Sequence[float] | None, seed: int,
                 loss_fn: LossFn | None) -> None:
    """Refuse bad settings before any model or data is touched (scoring calls this before any work)."""
    check_positive(delta, "delta")
    for value, name in ((samples, "samples"), (steps, "steps")):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "samples" else 0):
            raise ValueError(f"{name}: expected a {'positive' if name == 'samples' else 'non-negative'} integer, "
                             f"got {value!r}")
    if not isinstance(seed, int):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
    for d in () if grid is None else grid:
        try:
            d = float(d)
        except (TypeError, ValueError):
            raise ValueError(f"grid: expected positive numbers (relative displacements), got {d!r}") from None
        check_positive(d, "grid")
    resolve_loss(loss_fn)


def from_features(
    phi: torch.Tensor,
    y: torch.Tensor,
    linear: nn.Linear,
    *,
    layer_name: str = "",
    delta: float,
    samples: int = 32,
    steps: int = 10,
    grid: Sequence[float] | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> Measurement:
    """The measure from captured features ``phi [N, m]``, labels and the last layer (shared with scoring)."""
    start_time = time.perf_counter()
    check_params(delta=delta, samples=samples, steps=steps, grid=grid, seed=seed, loss_fn=loss_fn)
    deltas = sorted({float(delta) * 2.0 ** -k for k in range(7)} if grid is None else {float(d) for d in grid})
    if float(delta) not in deltas:
        deltas = sorted(deltas + [float(delta)])
    loss_fn = resolve_loss(loss_fn)
    phi = phi.detach().double()  # the loss differences of small delta cancel in float32 (6x off at 1e-4)
    dtype = phi.dtype
    weight = linear.weight.detach().to(dtype)
    bias = None if linear.bias is None else linear.bias.detach().to(dtype)
    n, m = phi.shape
    z = F.linear(phi, weight, bias)
    with torch.no_grad():
        base = _losses(z, y, loss_fn).detach()
    g_logits = logit_hessians(phi, weight, bias, y, loss_fn)
    kappa = float(pairwise_from_logit_hessians(phi, weight, bias, g_logits, loss_fn).mean())

    # the first-order worst case: delta ||W^T grad_W L||_* with grad_W L = mean_i dloss_i/dz phi_i^T
    zz = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = _losses(zz, y, loss_fn)
        dz = torch.autograd.grad(out.sum(), zz)[0] if out.requires_grad else torch.zeros_like(zz)
    nuclear = float(torch.linalg.matrix_norm(weight.T @ (dz.T @ phi) / n, ord="nuc"))

    generator = torch.Generator().manual_seed(seed)
    mats = haar_orthogonal(m, generator, torch.float64, samples).to(device=phi.device, dtype=dtype)
    shifts = torch.einsum("nd,sed,ke->snk", phi, mats, weight)  # W A_s phi_n: the logit change per unit delta
    quad = torch.einsum("snk,nkl,snl->sn", shifts, g_logits, shifts)  # [samples, N]

    if nuclear > 0:
        u, _, vh = torch.linalg.svd(weight.T @ (dz.T @ phi))
        start = u @ vh  # the maximiser of the first-order term over the spectral-norm ball
    else:
        start = mats[0].clone()
    curve = []
    per_sample_at_delta = None
    with torch.no_grad():
        for d in deltas:
            plus = _losses(z + d * shifts, y, loss_fn) - base  # [samples, N]
            minus = _losses(z - d * shifts, y, loss_fn) - base
            changes = (plus + minus) / 2
            per_a = changes.mean(1)
            random = float(per_a.mean())
            std_error = float(per_a.std(unbiased=True) / math.sqrt(samples)) if samples > 1 else None
            candidates = plus.mean(1).tolist() + minus.mean(1).tolist()
            worst = _worst(phi, z, y, weight, d, loss_fn, base, start, candidates, steps)
            curve.append({
                "delta": d, "random": random, "random_std_error": std_error, "worst": worst,
                "predicted": d * d / (2 * m) * kappa, "second_order": d * d / 2 * float(quad.mean()),
                "bound_at_minimum": d * d / 2 * kappa, "first_order_worst": d * nuclear,
            })
            if d == float(delta):
                per_sample_at_delta = changes.mean(0).detach().cpu()
                at_delta = curve[-1]
    details = {
        **{k: at_delta[k] for k in ("delta", "random", "random_std_error", "worst", "predicted", "second_order",
                                    "bound_at_minimum", "first_order_worst")},
        "kappa": kappa,
        "second_order_std_error": (float(quad.mean(1).std(unbiased=True)) * float(delta) ** 2 / 2 / math.sqrt(samples)
                                   if samples > 1 else None),
        "curve": curve,
        "feature_dim": m,
        "num_samples": n,
        "samples": samples,
        "steps": steps,
        "seed": seed,
        "layer": layer_name,
        "loss": float(base.mean()),
    }
    return Measurement(name="feature_robustness", value=at_delta["random"], per_sample=per_sample_at_delta,
                       details=details, seconds=time.perf_counter() - start_time)


def feature_robustness(
    model: nn.Module,
    data,
    *,
    delta: float,
    layer: str | nn.Module | None = None,
    samples: int = 32,
    steps: int = 10,
    grid: Sequence[float] | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    quiet: bool = False,
) -> Measurement:
    """Mean loss change when the features entering ``layer`` move as ``phi -> phi + delta A phi``.

    Petzka et al. 2021, https://arxiv.org/abs/2001.00939 (see the module docstring). ``delta``: the
    relative feature displacement (``||delta A phi|| = delta ||phi||`` for orthogonal ``A``).
    ``layer``: the ``nn.Linear`` producing the logits (default the last one). ``samples``: random
    orthogonal matrices (each used as ``+A`` and ``-A``); ``steps``: ascent steps of the worst case;
    ``grid``: the deltas of ``details["curve"]``. ``value``: the random-``A`` mean; ``details``: the
    worst case, the flatness prediction ``delta^2 kappa_Tr / (2 m)`` and the curve.
    """
    check_params(delta=delta, samples=samples, steps=steps, grid=grid, seed=seed, loss_fn=loss_fn)
    start = time.perf_counter()
    name, linear = find_layer(model, layer)
    with preserved(model):
        phi, _, y = features_and_logits(model, data, linear, quiet=quiet)
        result = from_features(phi, y, linear, layer_name=name, delta=delta, samples=samples, steps=steps,
                               grid=grid, seed=seed, loss_fn=loss_fn)
    result.seconds = time.perf_counter() - start
    return result


def from_forward(forward: ForwardPass, **params) -> Measurement:
    """The measure from scoring's shared forward pass (its captured features and last ``nn.Linear``)."""
    phi, y, layer, name = forward.penultimate("feature robustness")
    return from_features(phi, y, layer, layer_name=name, **params)


INFO = MeasureInfo(
    version="2",  # 2: computed in float64; kappa without cancellation (cross-entropy)
    paper="Petzka et al. 2021, Relative Flatness and Generalization, https://arxiv.org/abs/2001.00939",
    zoo_defaults={"delta": 0.1},
    from_forward=from_forward,
    forward_params=frozenset({"delta", "samples", "steps", "grid", "seed", "loss_fn"}),
    check=check_params,
)
