"""Lanczos with full reorthogonalisation on a symmetric matrix given only by ``v -> A v``.

Builds an orthonormal Krylov basis ``Q`` and the tridiagonal ``T = Q^T A Q`` (diagonal ``alpha``,
off-diagonal ``beta``); Ritz values/vectors of ``T`` approximate the extreme eigenpairs of ``A``
(Lanczos 1950; Golub & Van Loan, "Matrix Computations", ch. 10). Every new vector is
orthogonalised against the whole basis after the three-term recurrence (classical Gram-Schmidt,
repeated when the Daniel-Gragg-Kaufman-Stewart criterion asks for it), which keeps the basis
orthogonal to working precision and avoids spurious copies of converged eigenvalues.

Residual of a Ritz pair ``(theta_i, Q s_i)``: ``r_i = ||A Q s_i - theta_i Q s_i|| = |beta_m s_{m,i}|``;
an eigenvalue of ``A`` lies within ``r_i`` of ``theta_i``. Once ``theta_i`` is separated from the
rest of the spectrum by a gap ``delta_i > r_i``, the error is far smaller:
``|lambda_i - theta_i| <= r_i^2 / delta_i`` (the Kato-Temple / residual-gap bound; Parlett, "The
Symmetric Eigenvalue Problem", 1998, Thm 11.7.1; Saad, "Numerical Methods for Large Eigenvalue
Problems", 2011, Thm 3.8). :func:`ritz_error_bounds` estimates ``delta_i`` from the other Ritz
values, ``delta_i = min_{j != i} (|theta_j - theta_i| - r_j)`` (each ``theta_j`` has an eigenvalue
within ``r_j``), halved for safety. Like every Krylov bound it assumes the Krylov space has
resolved the eigenvalues near ``theta_i`` (an eigenvector nearly orthogonal to the start vector,
or a cluster narrower than the residual, stays invisible), so convergence is not tested before
``2 k + 2`` steps. Lanczos convergence itself (how fast ``r_i`` falls) is the Kaniel-Paige theory
(Kaniel 1966; Paige 1971; Saad 1980).

Which eigenvalue a Ritz value has found is the one thing no a-posteriori bound can tell: when the
wanted eigenvector has a small component in the start vector, a Ritz value can converge to the
*next* eigenvalue before the wanted one has emerged from the Krylov space, and both bounds then
describe the wrong eigenvalue. Stopping later makes that less likely, so the default rule,
``stopping="residual"``, waits until the residual itself meets ``tol`` (a product or two more than
``"bound"`` on the shared CIFAR-10 models). Measured (``notes/lanczos_stopping.py``, output in
``notes/hessian.md``): on a softmax regression trained on MNIST, whose top two eigenvalues are
3.3% apart, ``"bound"`` returned the second eigenvalue in 7 of 50 seeds, ``"residual"`` in none.

A Krylov space from one start vector holds one copy of each distinct eigenvalue, so it becomes
an invariant subspace (``beta ~ 0``) after as many steps as there are distinct eigenvalues. There
the iteration either stops or, with ``restart=True``, continues from a fresh random vector
orthogonal to the basis; each such block runs until it too is exhausted, and the iteration stops
when a block adds nothing to the top ``k`` (so repeated eigenvalues are found with their
multiplicity). The small ``beta`` dropped at a restart is kept in the residual estimates.

:func:`tridiagonal_quadrature` gives the Gauss quadrature nodes and weights that stochastic
Lanczos quadrature needs (Golub & Meurant 1994; Lin, Saad & Yang 2016).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ._basis import Basis
from ._validation import all_finite
from ._vector import dot64, norm64

__all__ = ["LanczosResult", "STOPPING", "lanczos", "ritz_error_bounds", "tridiagonal", "tridiagonal_quadrature"]

_WHICH = ("largest", "smallest", "magnitude")
#: the gap estimated from the Ritz values is divided by this before it enters ``r^2 / gap``: an
#: eigenvalue not yet resolved by its own Ritz value can sit closer than the Ritz values suggest
GAP_SAFETY = 2.0
#: stopping rules of :func:`lanczos` (see its docstring for what ``tol`` means in each)
STOPPING = ("bound", "residual", "change")
#: a reorthogonalisation pass is repeated when it leaves less than this share of the vector's norm
_DGKS = 0.5**0.5


@dataclass
class LanczosResult:
    """What :func:`lanczos` found.

    ``eigenvalues``: the selected Ritz values (``k`` of them, or all when ``k`` is None), ordered by
    ``which`` (descending for "largest", ascending for "smallest", by descending magnitude for
    "magnitude"); ``eigenvectors``: matching unit Ritz vectors as rows ``[k, dim]`` (when asked);
    ``residuals``: residual norms ``r_i`` for them; ``error_bounds``: a-posteriori bounds on
    ``|lambda_i - theta_i|`` (:func:`ritz_error_bounds`); ``alpha``/``beta``: the tridiagonal
    (float64, ``len(beta) == iterations - 1``); ``converged``: whether the ``k`` pairs met ``tol``
    (or the Krylov space was exhausted); ``stop_reason``: "converged", "invariant" (the Krylov space
was exhausted: the Ritz values are eigenvalues), "max_iter".
    """

    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    iterations: int
    converged: bool
    stop_reason: str
    eigenvectors: torch.Tensor | None = None
    error_bounds: torch.Tensor | None = None
    restarts: int = 0
    first_vector: torch.Tensor | None = field(default=None, repr=False)


def tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The dense symmetric tridiagonal matrix with diagonal ``alpha`` and off-diagonal ``beta``."""
    t = torch.diag(alpha)
    if beta.numel():
        t = t + torch.diag(beta, 1) + torch.diag(beta, -1)
    return t


def tridiagonal_quadrature(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature of the Lanczos tridiagonal: nodes (Ritz values, ascending) and weights.

    The weights are the squared first components of the eigenvectors of ``T``; they sum to 1.
    For ``T`` built from a unit start vector ``v``, ``sum_j w_j f(theta_j)`` approximates
    ``v^T f(A) v`` and is exact for polynomials of degree up to ``2 m - 1``.
    """
    t = tridiagonal(alpha.double().cpu(), beta.double().cpu())
    nodes, vecs = torch.linalg.eigh(t)
    return nodes, vecs[0, :] ** 2


def ritz_error_bounds(theta: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
    """A-posteriori bounds on ``|lambda_i - theta_i|`` for every Ritz pair of one Rayleigh-Ritz step.

    ``theta``/``residuals``: all Ritz values of ``T`` and their residual norms. The gap of
    ``theta_i`` to the rest of the spectrum is estimated as ``delta_i = min_{j != i} (|theta_j -
    theta_i| - r_j) / GAP_SAFETY`` (each ``theta_j`` has an eigenvalue within ``r_j``; the factor
    allows for an eigenvalue that no Ritz value has resolved yet); the bound is ``r_i^2 / delta_i``
    when ``delta_i > r_i`` (the gap is resolved: Kato-Temple), else ``r_i`` (an eigenvalue lies
    within the residual). A single Ritz value says nothing about the gap: its bound is its residual.

    Like every Krylov bound these assume the Krylov space has resolved the eigenvalues near
    ``theta_i``: an eigenvalue whose eigenvector is nearly orthogonal to the start vector, or a
    cluster narrower than the residual that one Ritz value still averages, is invisible to them
    (on such spectra use ``stopping="residual"`` with a small ``tol``).
    """
    theta, residuals = theta.double(), residuals.double()
    if theta.numel() < 2:
        return residuals.clone()
    gaps = (theta[None, :] - theta[:, None]).abs() - residuals[None, :]
    gaps.fill_diagonal_(float("inf"))
    delta = gaps.min(dim=1).values / GAP_SAFETY
    resolved = delta > residuals
    return torch.where(resolved, residuals**2 / torch.where(resolved, delta, torch.ones_like(delta)), residuals)


def _order(theta: torch.Tensor, which: str) -> torch.Tensor:
    if which == "largest":
        return torch.argsort(theta, descending=True)
    if which == "smallest":
        return torch.argsort(theta)
    return torch.argsort(theta.abs(), descending=True)


def _random_unit(dim: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    v = torch.randn(dim, generator=generator, dtype=torch.float64)  # drawn on CPU: same numbers on any device
    return (v / v.norm()).to(device=device, dtype=dtype)


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    k: int | None = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    which: str = "largest",
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    restart: bool = True,
    return_eigenvectors: bool = False,
    breakdown_tol: float | None = None,
    callback: Callable[[int], None] | None = None,
    stopping: str = "residual",
) -> LanczosResult:
    """Lanczos with full reorthogonalisation on the symmetric operator ``matvec`` of size ``dim``.

    Stops when the ``k`` Ritz pairs selected by ``which`` ("largest" algebraic, "smallest",
    "magnitude") all pass the ``stopping`` test with tolerance ``tol * max(|theta_i|, eps * ||T||)``,
    when the Krylov space is exhausted (with ``restart=True``: when a restarted block adds nothing
    to the top ``k``), or after ``max_iter`` steps (clamped to ``dim``). What ``tol`` means:

    * ``"residual"`` (default): the residual ``r_i = |beta_m s_{m,i}|`` is at most ``tol``
      relative: the eigenvectors' residuals meet ``tol``, and so does the error bound of each
      eigenvalue (:func:`ritz_error_bounds`, ``min(r_i, r_i^2 / delta_i) <= r_i``), which is
      usually far smaller;
    * ``"bound"``: stops as soon as the error bound ``min(r_i, r_i^2 / delta_i)`` is at most
      ``tol`` relative, trusting the gap ``delta_i`` the Ritz values suggest: a product or two
      earlier, and more often the wrong eigenvalue when one has not yet emerged (module docstring);
    * ``"change"``: PyHessian's rule: the ``k`` Ritz values changed by at most ``tol`` relative
      since the previous step. It bounds nothing (a slow iteration changes little too).

    ``k=None``
    runs all ``max_iter`` steps (no convergence test) and returns every Ritz value: the mode of
    stochastic Lanczos quadrature, used with ``restart=False`` so the iteration stops on an
    invariant subspace instead of restarting. The start vector is ``v0`` (normalised) or a
    Gaussian vector drawn from ``generator``. ``breakdown_tol`` (relative to the largest
    ``|alpha|``/``beta`` so far) defaults to ``100 * eps(dtype)``. ``callback(i)`` runs after
    step ``i``.
    """
    if stopping not in STOPPING:
        raise ValueError(f"stopping: expected one of {', '.join(map(repr, STOPPING))}, got {stopping!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected a positive integer, got {dim!r}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > dim):
        raise ValueError(f"k: expected an integer in 1..{dim} (the operator's size), got {k!r}")
    if which not in _WHICH:
        raise ValueError(f"which: expected one of {', '.join(map(repr, _WHICH))}, got {which!r}")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    if k is not None and max_iter < k:
        raise ValueError(f"max_iter: must be at least k={k} to find {k} eigenvalues, got {max_iter}")
    if not (isinstance(tol, (int, float)) and tol > 0 and tol == tol):
        raise ValueError(f"tol: expected a positive relative residual tolerance, got {tol!r}")
    device = torch.device(device)
    m = min(max_iter, dim)
    min_steps = 0 if k is None else min(dim, 2 * k + 2)
    eps = torch.finfo(dtype).eps
    brk = 100.0 * eps if breakdown_tol is None else float(breakdown_tol)
    tiny = torch.finfo(torch.float64).tiny

    if v0 is None:
        q = _random_unit(dim, generator, dtype, device)
    else:
        if not isinstance(v0, torch.Tensor) or v0.shape != (dim,):
            raise ValueError(f"v0: expected a start vector of shape [{dim}]")
        nrm = norm64(v0)
        if not nrm > 0 or nrm != nrm or nrm == float("inf"):
            raise ValueError("v0: the start vector must be finite and non-zero")
        q = (v0.to(device=device, dtype=torch.float64) / nrm).to(dtype)
    first = q

    # Each next vector is divided straight into its basis row, and the residual vector reuses one
    # buffer: on a CPU a fresh parameter-sized tensor per step is mostly the first touch of its pages.
    basis = Basis(dim, m, dtype, device)
    basis.append(q, 1.0)
    work = torch.empty(dim, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples steps j and j+1 (0.0 at a restart)
    breaks: list[tuple[int, float]] = []  # (step, dropped beta) at each restart
    scale = 0.0
    stop_reason = "max_iter"
    theta = s = None
    restarts = 0
    prev_top: torch.Tensor | None = None  # top-k Ritz values before the latest restart
    prev_step_top: torch.Tensor | None = None  # top-k Ritz values of the previous step (stopping="change")
    converged = False
    j = 0
    while True:
        q = basis.row(j)
        w = matvec(q).to(device=device, dtype=dtype)
        if not all_finite(w):
            raise FloatingPointError(
                f"lanczos: the operator returned non-finite values at step {j + 1}; check the model and loss for NaN/inf"
            )
        a = dot64(q, w)
        alphas.append(a)
        # The three-term recurrence first (into ``work``: ``w`` may be the caller's), then full
        # reorthogonalisation against the whole basis, repeated only when it removed a large part
        # of what was left (Daniel, Gragg, Kaufman & Stewart 1976: a vector that keeps at least
        # 1/sqrt(2) of its norm through a classical Gram-Schmidt pass is orthogonal to working
        # precision; "twice is enough", Giraud et al. 2005, covers the case it did not).
        w = torch.add(w, q, alpha=-a, out=work)
        if j and betas[-1]:
            w.add_(basis.row(j - 1), alpha=-betas[-1])
        before = norm64(w)
        basis.orthogonalise(w)
        b = norm64(w)
        if b < _DGKS * before:
            basis.orthogonalise(w)
            b = norm64(w)
        scale = max(scale, abs(a), b)
        j += 1
        if callback is not None:
            callback(j)

        exhausted = b <= brk * max(scale, tiny)
        need_eig = k is not None or j == m or exhausted
        if need_eig:
            t = tridiagonal(torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64))
            theta, s = torch.linalg.eigh(t)
            res2 = (b * s[-1, :]) ** 2
            for step, dropped in breaks:
                res2 = res2 + (dropped * s[step - 1, :]) ** 2
            res = res2.sqrt()
        if k is not None and j >= k:
            idx = _order(theta, which)[:k]
            bound = tol * torch.clamp(theta[idx].abs(), min=max(eps * scale, tiny))
            if stopping == "bound":
                ok = bool((ritz_error_bounds(theta, res)[idx] <= bound).all())
            elif stopping == "residual":
                ok = bool((res[idx] <= bound).all())
            else:
                ok = prev_step_top is not None and bool(((theta[idx] - prev_step_top).abs() <= bound).all())
                prev_step_top = theta[idx].clone()
            if j < min_steps and not exhausted:
                ok = False  # too small a Krylov space to have resolved the top of the spectrum
            if ok and restarts == 0 and not exhausted:
                converged, stop_reason = True, "converged"
                break
            # After a restart a block can only reveal further copies of eigenvalues already
            # seen, so it runs until it is exhausted; if it added nothing to the top k, stop.
            if ok and exhausted and prev_top is not None and prev_top.numel() == k and torch.allclose(
                theta[idx], prev_top, rtol=tol, atol=eps * scale
            ):
                converged, stop_reason = True, "invariant"
                break
        if j == m:
            if j == dim:  # the basis spans the whole space: T is similar to the operator
                converged, stop_reason = True, "invariant"
            break
        if exhausted:
            if not restart:
                stop_reason, converged = "invariant", True
                break
            # Continue from a random direction orthogonal to the basis.
            fresh = torch.randn(dim, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
            for _ in range(2):
                basis.orthogonalise(fresh)
            fn = norm64(fresh)
            if fn <= 1e-3:  # the basis already spans (numerically) the whole space
                stop_reason, converged = "invariant", True
                break
            prev_top = theta[_order(theta, which)[:k]] if k is not None else None
            breaks.append((j, b))
            betas.append(0.0)
            restarts += 1
            basis.append(fresh, fn)
        else:
            betas.append(b)
            basis.append(w, b)

    assert theta is not None and s is not None
    res = res.clone()
    order = _order(theta, which)
    idx = order if k is None else order[: min(k, theta.numel())]
    vecs = None
    if return_eigenvectors:
        vecs = basis.combine(s[:, idx])  # [k, dim]
        for v in vecs:  # float64-accumulated norms: a float32 norm of a long vector is off by 1e-3
            v.div_(norm64(v))
    return LanczosResult(
        eigenvalues=theta[idx].clone(),
        residuals=res[idx].clone(),
        error_bounds=ritz_error_bounds(theta, res)[idx],
        alpha=torch.tensor(alphas, dtype=torch.float64),
        beta=torch.tensor(betas, dtype=torch.float64),
        iterations=j,
        converged=converged,
        stop_reason=stop_reason,
        eigenvectors=vecs,
        restarts=restarts,
        first_vector=first,
    )
