"""Shared pieces of the ART adapter tests: the real MNIST split, a tiny CNN, classifiers, ART's PGD."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

MEAN, STD = 0.1307, 0.3081
N_TRAIN, N_TEST = 4000, 500
EPS = 0.1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, 2 threads oversubscribe and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def mnist_split(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A class-balanced, seeded 4,000 / 500 train / test split of the real MNIST test set (numpy, [0, 1])."""
    from flatplug.sources import load_mnist

    x, y = load_mnist(root, n=N_TRAIN + N_TEST, seed=0)
    x, y = x.numpy(), y.numpy()
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def tiny_cnn(seed: int = 0, channels: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(256, 10),
    )


def classifier(seed: int = 0, *, cls=None, lr: float = 3e-3, sgd: bool = False, clip=(0.0, 1.0),
               preprocessing=(MEAN, STD), loss=None, net=None, **kwargs):
    """A ``PyTorchClassifier`` (or ``cls``) over ``tiny_cnn(seed)`` with Adam (or SGD), clip values, normalisation."""
    from art.estimators.classification import PyTorchClassifier

    net = net if net is not None else tiny_cnn(seed)
    cls = cls or PyTorchClassifier
    opt = torch.optim.SGD(net.parameters(), lr) if sgd else torch.optim.Adam(net.parameters(), lr)
    return cls(net, loss or nn.CrossEntropyLoss(), (1, 28, 28), 10, optimizer=opt,
               clip_values=clip, preprocessing=preprocessing, device_type="cpu", **kwargs)


def art_pgd(clf, eps: float = EPS, steps: int = 10):
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(clf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps, num_random_init=0,
                                    batch_size=500, verbose=False)


def accuracies(clf, x: np.ndarray, y: np.ndarray, eps: float = EPS) -> tuple[float, float]:
    """Clean accuracy and robust accuracy under ART's PGD (10 steps, no random start) at ``eps``."""
    clean = float((clf.predict(x).argmax(1) == y).mean())
    adv = art_pgd(clf, eps).generate(x, y=np.eye(10, dtype=np.float32)[y])
    return clean, float((clf.predict(adv).argmax(1) == y).mean())


def weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]
