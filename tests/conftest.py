"""Shared fixtures: tiny nets, independent dense references, and the ../shared folder."""

from __future__ import annotations

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


class Quadratic(nn.Module):
    """Logits are the parameter ``w`` repeated per sample; a ``loss_fn`` turns them into a quadratic in ``w``."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w.unsqueeze(0).expand(x.shape[0], -1) + 0.0 * x[:, :1]
