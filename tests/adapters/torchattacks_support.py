"""Shared pieces of the torchattacks adapter tests: a real CIFAR-10 model and real test images.

The model is ``marabou_small`` from ../shared/models (about 85k weights, standard-ish training,
so attacks flip most labels within a few steps); the images are a seeded class-balanced subset of
the real CIFAR-10 test set in ../shared/data. Both are cached per process.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path

MODEL = "marabou_small"
EPS = 8 / 255


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One torch thread: the test machine's 2 cores are shared, and 2 threads oversubscribe them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _zoo(path: str):
    from flatplug.sources import ZooSource

    return ZooSource(path)


def zoo():
    return _zoo(str(shared_path("models", "zoo.json")))


@functools.lru_cache(maxsize=None)
def _model(path: str, name: str):
    return _zoo(path).load(name).module


def model(name: str = MODEL) -> torch.nn.Module:
    """The zoo model ``name`` (takes [0, 1] images; normalisation inside), in eval mode."""
    return _model(str(shared_path("models", "zoo.json")), name).eval()


@functools.lru_cache(maxsize=None)
def _images(path: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from flatplug.sources import load_imagefolder

    x, y = load_imagefolder(path, n=n, seed=0)
    return x.clone(), y.clone()


def images(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real CIFAR-10 test images in [0, 1] and their labels (fresh copies)."""
    x, y = _images(str(shared_path("data", "cifar10", "test.tar.gz")), n)
    return x.clone(), y.clone()


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def input_grad_norms(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample ``||grad_x CE(net(x), y)||_q``, by plain autograd (independent of the attacks)."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(net(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g.flatten(1).norm(p=q, dim=1)


def wrong_confidence(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample largest softmax probability among the classes other than ``y``."""
    with torch.no_grad():
        p = net(x).softmax(1)
    p = p.clone()
    p[torch.arange(len(y)), y] = -1.0
    return p.max(1).values


def model_state(net: torch.nn.Module) -> dict:
    """Modes, requires_grad, grads and hook counts: what an attack must leave as it found it."""
    return {
        "modes": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules()],
        "weights": [p.detach().clone() for p in net.parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(before["weights"], after["weights"]):
        assert torch.equal(a, b)
