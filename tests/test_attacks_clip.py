"""The core PGD's ``clip`` option: [0, 1] by default, any box, or unconstrained inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flatplug.attacks import pgd


def linear_two_class(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).double()


def test_unconstrained_l2_pgd_reaches_the_exact_worst_case_outside_the_unit_box():
    """With clip=None the L2 optimum of a linear two-class model, x + eps (w_other - w_y) / ||w_other - w_y||,
    is reached even where it leaves [0, 1] (inputs here are standardised features, some negative);
    the default clip would refuse these inputs, and a box clamps the result."""
    model = linear_two_class()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (7,), generator=g)
    w = model[1].weight.detach()
    direction = w[1 - y] - w[y]
    eps = 2.0
    expected = x + eps * direction / direction.norm(dim=1, keepdim=True)
    adv = pgd(model, x, y, eps=eps, norm="l2", steps=10, random_start=False, clip=None)
    assert torch.allclose(adv, expected, atol=1e-12)
    assert adv.min() < -1 or adv.max() > 2  # far outside [0, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(model, x, y, eps=eps, norm="l2")
    box = pgd(model, x, y, eps=eps, norm="l2", steps=10, random_start=False, clip=(-5.0, 5.0))
    assert box.min() >= -5 and box.max() <= 5


def test_default_clip_keeps_unit_box_and_bad_clip_is_an_error():
    model = linear_two_class()
    x = torch.rand(5, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1])
    a = pgd(model, x, y, eps=0.5, norm="linf", steps=5)
    b = pgd(model, x, y, eps=0.5, norm="linf", steps=5, clip=(0.0, 1.0))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    with pytest.raises(ValueError, match="clip"):
        pgd(model, x, y, eps=0.1, clip=(1.0, 0.0))
    with pytest.raises(ValueError, match="clip"):
        pgd(model, x, y, eps=0.1, clip=0.5)
    with pytest.raises(ValueError, match="outside clip"):
        pgd(model, x + 3, y, eps=0.1, clip=(0.0, 2.0))
