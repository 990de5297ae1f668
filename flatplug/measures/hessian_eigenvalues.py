"""Top Hessian eigenvalues of the mean loss: the classic sharpness number.

The largest eigenvalue of the loss Hessian is the curvature along the sharpest direction in
weight space (Keskar et al. 2017, "On large-batch training ... sharp minima"; Yao et al. 2020,
"PyHessian"). It is found matrix-free by Lanczos with full reorthogonalisation on exact
Hessian-vector products accumulated over all batches (Pearlmutter 1994).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .._loss import LossFn
from .._params import ParamSpec
from .._progress import progress
from .._state import preserved
from .._validation import check_choice
from ..hvp import HessianOperator, check_int
from ..lanczos import lanczos
from ..registry import MeasureInfo
from ..types import Measurement

WHICH = ("largest", "smallest", "magnitude")


def hessian_eigenvalues(
    model: nn.Module,
    data: object,
    *,
    k: int = 1,
    params: ParamSpec = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    which: str = "largest",
    return_eigenvectors: bool = False,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    quiet: bool = False,
    stopping: str = "residual",
) -> Measurement:
    """The ``k`` extreme eigenvalues of the Hessian of the mean loss over ``data`` w.r.t. ``params``.

    ``which``: "largest" (algebraic, the default), "smallest" (most negative curvature) or
    "magnitude" (largest ``|lambda|``). Lanczos stops when every one of the ``k`` Ritz pairs has
    residual ``||H v - theta v|| <= tol * |theta|`` or after ``max_iter`` Hessian-vector products;
    ``stopping="change"`` stops instead when the values change by at most ``tol`` (relative)
    between steps, PyHessian's rule: fewer products, no error bound.
    ``value`` is the first eigenvalue in that order; ``details["eigenvalues"]`` lists all ``k``;
    with ``return_eigenvectors`` the unit eigenvectors are in ``artifacts["eigenvectors"]``
    (``[k, dim]``) and ``artifacts["eigenvectors_by_param"]`` (one ``{name: tensor}`` per vector).
    """
    start = time.perf_counter()
    check_int(k, "k", lo=1)
    check_int(max_iter, "max_iter", lo=1)
    check_int(seed, "seed", lo=None)
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < float("inf")):
        raise ValueError(f"tol: expected a positive relative residual tolerance (e.g. 1e-3), got {tol!r}")
    check_choice(which, "which", WHICH)
    if max_iter < k:
        raise ValueError(f"max_iter: must be at least k={k} (one Hessian-vector product per Lanczos step), got {max_iter}")

    with preserved(model):
        op = HessianOperator(model, data, params=params, loss_fn=loss_fn)
        if k > op.dim:
            raise ValueError(f"k: asked for {k} eigenvalues of a {op.dim}-dimensional Hessian; pass k <= {op.dim}")
        gen = torch.Generator().manual_seed(seed)
        bar = progress(range(min(max_iter, op.dim)), desc="hessian_eigenvalues", quiet=quiet)
        res = lanczos(
            op.matvec,
            op.dim,
            k=k,
            tol=tol,
            max_iter=max_iter,
            which=which,
            generator=gen,
            dtype=op.dtype,
            device=op.device,
            restart=True,
            return_eigenvectors=return_eigenvectors,
            callback=lambda i: bar.update(1),
            stopping=stopping,
        )
        bar.close()
        loss = op.loss()
        names = list(op.param_names)
        artifacts: dict = {}
        if return_eigenvectors:
            assert res.eigenvectors is not None
            vecs = res.eigenvectors.detach()
            artifacts["eigenvectors"] = vecs
            artifacts["eigenvectors_by_param"] = [op.unflatten(v) for v in vecs]
        hvps = op.hvp_count
        dim = op.dim
        del op

    eigenvalues = [float(t) for t in res.eigenvalues]
    details = {
        "eigenvalues": eigenvalues,
        "residuals": [float(r) for r in res.residuals],
        "iterations": res.iterations,
        "converged": res.converged,
        "stop_reason": res.stop_reason,
        "stopping": stopping,
        "restarts": res.restarts,
        "hvp_count": hvps,
        "num_params": dim,
        "params": names,
        "loss": loss,
        "k": k,
        "tol": tol,
        "max_iter": max_iter,
        "which": which,
        "seed": seed,
    }
    return Measurement(
        name="hessian_eigenvalues",
        value=eigenvalues[0],
        per_sample=None,
        details=details,
        seconds=time.perf_counter() - start,
        artifacts=artifacts,
    )


INFO = MeasureInfo(
    version="1",
    paper="Yao et al. 2020 (PyHessian), https://arxiv.org/abs/1912.07145; Keskar et al. 2017",
    default=True,
    zoo_defaults={"k": 1, "max_iter": 50},
)
