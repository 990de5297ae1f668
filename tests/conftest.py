"""Shared fixtures: tiny nets, independent dense references, and the ../shared folder."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the test with a clear reason when the folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: real data and models live in ../shared beside the project checkout")
    return path


def tiny_mlp(d_in: int = 5, hidden: int = 4, classes: int = 3, *, bias: bool = True, seed: int = 0,
             dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, hidden, bias=bias), nn.Tanh(), nn.Linear(hidden, classes, bias=bias)
    ).to(dtype)


def tiny_batch(n: int = 16, d_in: int = 5, classes: int = 3, *, seed: int = 1,
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d_in, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy w.r.t. the named parameters, by torch.autograd.functional."""
    params = dict(model.named_parameters())
    names = names or list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        override = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return F.cross_entropy(functional_call(model, override, (x,)), y)

    was = model.training
    model.eval()
    h = torch.autograd.functional.hessian(loss_of, flat0)
    model.train(was)
    return h


def assert_operator_matches_dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rtol: float, seed: int,
                                  names: list[str] | None = None) -> None:
    """``HessianOperator`` products equal the dense Hessian's (float64 models: to ``rtol`` of the
    largest entry): cached on one batch, streamed over two batches and uncached; with ``names``,
    w.r.t. those parameters only (cached)."""
    from flatplug._state import preserved
    from flatplug.hvp import HessianOperator

    dense = dense_hessian(model, x, y, names=names)
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = dense @ v
    ways = [((x, y), "auto")] if names else [((x, y), "auto"), ([(x[:2], y[:2]), (x[2:], y[2:])], "auto"), ((x, y), False)]
    for data, cache in ways:
        with preserved(model):
            hv = HessianOperator(model, data, params=names, cache_graph=cache).matvec(v)
        assert float((hv - expected).abs().max()) <= rtol * float(expected.abs().max())


def switched_against_stock(model: nn.Module, x: torch.Tensor, y: torch.Tensor, switch, rtol: float,
                           switched: int, grad_atol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Records the gradient of ``model`` (float64) on the stock graph and inside ``switch(model)``
    (a context manager yielding how many layers it switched, checked against ``switched``); the
    gradients (input included) must agree and the switched graph's Hessian-vector products equal
    the dense Hessian's, to ``rtol`` of the largest entry (the gradients also to ``grad_atol``
    absolute, when given). Returns (switched output, stock output)."""
    params = list(model.parameters())
    dense = dense_hessian(model, x, y)
    x = x.clone().requires_grad_(True)
    stock_out = model(x)
    stock = torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(stock_out, y), [x] + params)])
    with switch(model) as count:
        out = model(x)
        grads = torch.autograd.grad(F.cross_entropy(out, y), [x] + params, create_graph=True)
    assert count == switched
    flat = torch.cat([g.detach().reshape(-1) for g in grads])
    assert float((flat - stock).abs().max()) <= rtol * float(stock.abs().max())
    if grad_atol is not None:
        assert torch.allclose(flat, stock, rtol=0, atol=grad_atol)
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    vs = [c.reshape(p.shape) for c, p in zip(torch.split(v, [p.numel() for p in params]), params)]
    hv = torch.cat([h.reshape(-1) for h in torch.autograd.grad(grads[1:], params, grad_outputs=vs)])
    expected = dense @ v
    assert float((hv - expected).abs().max()) <= rtol * float(expected.abs().max())
    return out.detach(), stock_out.detach()


def stock_gradient_norm_derivatives(model: nn.Module, x: torch.Tensor, y: torch.Tensor, q: float,
                                    wrt: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``||grad_x sum_i l_i||_q`` per sample on the stock autograd graph, and the flat derivatives
    of their sum w.r.t. the input and ``wrt``: the reference for ``gradient_norms``."""
    xs = x.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(model(xs), y, reduction="sum"), xs, create_graph=True)[0]
    norms = g.flatten(1).norm(p=q, dim=1)
    derivatives = torch.autograd.grad(norms.sum(), [xs] + wrt)
    return norms.detach(), torch.cat([d.reshape(-1) for d in derivatives])


@pytest.fixture
def mlp() -> nn.Sequential:
    return tiny_mlp()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_batch()


class ThreeDOutput(nn.Module):
    """A tiny MLP whose output has an extra axis: not the ``[N, classes]`` logits measures need."""

    def __init__(self):
        super().__init__()
        self.net = tiny_mlp()

    def forward(self, x):
        return self.net(x)[:, None, :]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def plain_pgd(model, x, y, eps, steps, alpha):
    """PGD without random start written from scratch with plain torch (the independent reference)."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return adv


class LinearLogit(nn.Module):
    """``x -> [0, w.x + b]``: softmax cross-entropy of these logits is the logistic loss softplus(-s z)."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.weight = nn.Parameter(w.detach().clone().reshape(1, -1))
        self.bias = nn.Parameter(torch.tensor([float(b)], dtype=w.dtype))

    def forward(self, x):
        z = x.flatten(1) @ self.weight[0] + self.bias[0]
        return torch.stack([torch.zeros_like(z), z], 1)


class Quadratic(nn.Module):
    """Logits are the parameter ``w`` repeated per sample; a ``loss_fn`` turns them into a quadratic in ``w``."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w.unsqueeze(0).expand(x.shape[0], -1) + 0.0 * x[:, :1]


def quadratic_loss(a: torch.Tensor, target: torch.Tensor):
    """``loss_fn`` giving per-sample ``0.5 (z - t)^T A (z - t)`` of the logits ``z``: with :class:`Quadratic`
    (logits = ``w``) the Hessian of the mean loss w.r.t. ``w`` is exactly the symmetric matrix ``A``."""

    def loss_fn(logits, y):
        d = logits - target
        return 0.5 * ((d @ a) * d).sum(1)

    return loss_fn


def quadratic_problem(a: torch.Tensor, seed: int = 0, n: int = 6):
    """``(Quadratic model, (x, y), loss_fn)`` whose loss Hessian w.r.t. the model's ``w`` is ``a``."""
    g = torch.Generator().manual_seed(seed)
    dim = a.shape[0]
    w0 = torch.randn(dim, generator=g, dtype=torch.float64)
    target = torch.randn(dim, generator=g, dtype=torch.float64)
    x, y = torch.rand(n, 2, generator=g, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
    return Quadratic(w0), (x, y), quadratic_loss(a, target)


def with_spectrum(eigenvalues, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, U)``: a dense symmetric ``A = U diag(eigenvalues) U^T`` with a random orthogonal ``U``."""
    ev = torch.as_tensor(eigenvalues, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(ev.numel(), ev.numel(), generator=g, dtype=torch.float64))
    a = (u * ev) @ u.T
    return (a + a.T) / 2, u


@functools.lru_cache(maxsize=None)
def mnist_softmax_regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A softmax regression (Linear 196 -> 10, 1,970 weights) trained by 200 full-batch SGD steps
    (lr 0.5) on 600 real MNIST test images, 2x2 average-pooled; returned in float64 with its inputs,
    labels and dense Hessian (:func:`dense_hessian`). Its top two eigenvalues are 3.3% apart, a
    case where Lanczos can stop on the second before the first has emerged."""
    from flatplug.sources import load_mnist

    x, y = load_mnist(shared_path("data", "mnist"), n=600, seed=0)
    x = F.avg_pool2d(x, 2)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(196, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model, x = model.double(), x.double()
    return model, x, y, dense_hessian(model, x, y)



def kappa_reference(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Per-sample relative flatness kappa_Tr (pairwise, softmax cross-entropy) in float64, written as
    ``||phi||^2 sum_k p_k ||w_k - sum_l p_l w_l||^2``: the spread of the weight rows about their mean
    under the predicted distribution (no difference of nearly equal terms, so right for confident
    predictions)."""
    phi, weight = phi.double(), weight.double()
    logits = phi @ weight.T + (0.0 if bias is None else bias.double())
    p = torch.softmax(logits, 1)
    spread = (p * (weight[None] - (p @ weight)[:, None]).pow(2).sum(-1)).sum(1)
    return phi.pow(2).sum(1) * spread
