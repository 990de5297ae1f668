"""hessian_density (stochastic Lanczos quadrature) against the dense autograd Hessian's spectrum."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

from conftest import ThreeDOutput, dense_hessian, tiny_batch, tiny_mlp
from flatplug.measures import hessian_density


@functools.lru_cache(maxsize=None)
def spectrum() -> tuple[torch.Tensor, torch.Tensor]:
    h = dense_hessian(tiny_mlp(), *tiny_batch())
    return h, torch.linalg.eigvalsh(h)


def three_batches(x, y):
    return [(x[:5], y[:5]), (x[5:11], y[5:11]), (x[11:], y[11:])]


def sphere_quadratic_form_std(h: torch.Tensor) -> float:
    """Std of v^T H v for v uniform on the unit sphere in R^n: sqrt(2/(n(n+2)) (tr H^2 - tr(H)^2/n))."""
    n = h.shape[0]
    tr, tr2 = float(torch.trace(h)), float(torch.trace(h @ h))
    return math.sqrt(2.0 / (n * (n + 2)) * (tr2 - tr**2 / n))


@pytest.mark.parametrize("split, iterations", [(False, 10), (True, 6)])
def test_first_moment_estimates_the_mean_eigenvalue(split, iterations):
    model, (x, y) = tiny_mlp(), tiny_batch()
    h, _ = spectrum()
    runs = 8
    data = three_batches(x, y) if split else (x, y)
    m = hessian_density(model, data, iterations=iterations, runs=runs, quiet=True)
    # sum_j w_j theta_j = e1^T T e1 = v^T H v for the unit start vector v: unbiased for tr(H)/n
    bound = 5 * sphere_quadratic_form_std(h) / math.sqrt(runs)
    assert abs(m.value - float(torch.trace(h)) / 39) <= bound
    assert m.value == m.details["first_moment"]
    assert m.details["runs"] == runs and len(m.details["nodes"]) == runs == len(m.details["weights"])
    for w in m.details["weights"]:
        assert abs(sum(w) - 1.0) <= 1e-12 and min(w) >= 0
    json.dumps(m.details)


def test_density_integrates_to_one_and_matches_the_node_moment():
    model, batch = tiny_mlp(), tiny_batch()
    m = hessian_density(model, batch, iterations=15, runs=2, grid_points=1000, quiet=True)
    grid = torch.tensor(m.details["grid"], dtype=torch.float64)
    dens = torch.tensor(m.details["density"], dtype=torch.float64)
    assert grid.numel() == dens.numel() == 1000 and bool((dens >= 0).all())
    assert abs(float(torch.trapezoid(dens, grid)) - 1.0) <= 1e-12
    # The grid reaches 5 kernel widths beyond the extreme nodes: each kernel loses at most the
    # two-sided Gaussian tail 2 Phi(-5) of its mass, which moves the mean by at most that mass
    # times the grid's width; trapezoid error is far smaller at ~9 points per kernel width.
    width = float(grid[-1] - grid[0])
    tail = math.erfc(5 / math.sqrt(2))
    grid_mean = float(torch.trapezoid(grid * dens, grid))
    assert abs(grid_mean - m.details["first_moment"]) <= 2 * tail * width
    assert m.details["sigma"] == pytest.approx(0.01 * (m.details["lambda_max"] - m.details["lambda_min"]))


def test_support_covers_the_spectrum_and_extremes_are_exact():
    model, batch = tiny_mlp(), tiny_batch()
    _, ev = spectrum()
    lo, hi = float(ev[0]), float(ev[-1])
    m = hessian_density(model, batch, iterations=20, quiet=True)
    assert m.details["grid"][0] <= lo and m.details["grid"][-1] >= hi
    m = hessian_density(model, batch, iterations=100, runs=2, quiet=True)
    for nodes in m.details["nodes"]:
        assert abs(min(nodes) - lo) <= 1e-6 * abs(lo) and abs(max(nodes) - hi) <= 1e-6 * abs(hi)
    # the Krylov space is exhausted after one step per distinct eigenvalue (39 minus the
    # 4 repeats of the 5-fold zero eigenvalue of softmax cross-entropy's shift invariance)
    assert m.details["iterations_per_run"] == [35, 35]


def test_negative_mass_estimates_the_fraction_of_negative_eigenvalues():
    model, batch = tiny_mlp(), tiny_batch()
    _, ev = spectrum()
    n = ev.numel()
    neg = int((ev < -1e-6 * float(ev.abs().max())).sum())
    p = neg / n
    runs = 6
    m = hessian_density(model, batch, iterations=100, runs=runs, quiet=True)
    # With a full Krylov space the weight on negative nodes is sum_{lambda_i<0} (v . u_i)^2 for
    # v uniform on the sphere: Beta(neg/2, (n-neg)/2), mean p, variance 2 p (1-p) / (n+2).
    bound = 5 * math.sqrt(2 * p * (1 - p) / (n + 2) / runs)
    assert abs(m.details["negative_mass"] - p) <= bound


def test_explicit_sigma_and_grid():
    model, batch = tiny_mlp(), tiny_batch()
    m = hessian_density(model, batch, iterations=8, sigma=0.05, grid_points=300, quiet=True)
    assert m.details["sigma"] == 0.05 and len(m.details["grid"]) == 300
    assert m.details["grid"][0] == pytest.approx(min(m.details["nodes"][0]) - 0.25)
    assert m.details["grid"][-1] == pytest.approx(max(m.details["nodes"][0]) + 0.25)
    with pytest.warns(RuntimeWarning, match="under-resolved"):
        hessian_density(model, batch, iterations=8, sigma=1e-6, grid_points=50, quiet=True)


def test_deterministic_given_seed():
    model, batch = tiny_mlp(), tiny_batch()
    a = hessian_density(model, batch, iterations=6, runs=2, seed=5, quiet=True)
    b = hessian_density(model, batch, iterations=6, runs=2, seed=5, quiet=True)
    assert a.details["nodes"] == b.details["nodes"] and a.value == b.value


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iterations": 0}, "iterations: expected an integer >= 1"),
        ({"runs": 0}, "runs: expected an integer >= 1"),
        ({"grid_points": 1}, "grid_points: expected an integer >= 2"),
        ({"sigma": 0.0}, "sigma: expected a positive"),
        ({"sigma": -1.0}, "sigma: expected a positive"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian_density(tiny_mlp(), tiny_batch(), quiet=True, **kwargs)


def test_bad_data_and_model():
    with pytest.raises(ValueError, match="no batches"):
        hessian_density(tiny_mlp(), [], quiet=True)
    with pytest.raises(ValueError, match=r"logits of shape \[N, classes\]"):
        hessian_density(ThreeDOutput(), tiny_batch(), quiet=True)


def test_model_left_unchanged():
    model, (x, y) = tiny_mlp(), tiny_batch()
    model.train()
    model[0].bias.requires_grad_(False)
    model[2].weight.grad = torch.full_like(model[2].weight, -2.0)
    model.register_forward_hook(lambda mod, inp, out: None)
    modes = [m.training for m in model.modules()]
    weights = [t.clone() for t in model.state_dict().values()]
    req = [p.requires_grad for p in model.parameters()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    hessian_density(model, three_batches(x, y), iterations=5, params=["0.weight", "2"], quiet=True)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(weights, model.state_dict().values()))
    assert [p.requires_grad for p in model.parameters()] == req
    assert torch.equal(model[2].weight.grad, torch.full_like(model[2].weight, -2.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "2.weight")
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()] == hooks
