"""hessian_trace against the trace of the dense autograd Hessian, within bounds from the known variance."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

from conftest import ThreeDOutput, dense_hessian, tiny_batch, tiny_mlp
from flatplug.measures import hessian_trace


@functools.lru_cache(maxsize=None)
def hessian(names: tuple[str, ...] | None = None) -> torch.Tensor:
    return dense_hessian(tiny_mlp(), *tiny_batch(), list(names) if names else None)


def rademacher_variance(h: torch.Tensor) -> float:
    """Var(v^T H v) for Rademacher v: 2 (||H||_F^2 - sum_i H_ii^2)."""
    return 2.0 * float((h**2).sum() - (torch.diagonal(h) ** 2).sum())


def three_batches(x, y):
    return [(x[:5], y[:5]), (x[5:11], y[5:11]), (x[11:], y[11:])]


@pytest.mark.parametrize("split", [False, True])
def test_hutchinson_within_five_standard_errors(split):
    model, (x, y) = tiny_mlp(), tiny_batch()
    h = hessian()
    data = three_batches(x, y) if split else (x, y)
    m = hessian_trace(model, data, probes=60, tol=0, quiet=True)
    assert m.details["probes_used"] == 60 and m.details["method"] == "hutchinson"
    bound = 5 * math.sqrt(rademacher_variance(h) / 60)
    assert abs(m.value - float(torch.trace(h))) <= bound
    assert m.details["num_params"] == 39
    json.dumps(m.details)


def test_hutchinson_on_a_parameter_subset():
    model, batch = tiny_mlp(), tiny_batch()
    names = ("2.weight", "2.bias")
    h = hessian(names)
    m = hessian_trace(model, batch, params=model[2], probes=50, tol=0, quiet=True)
    assert m.details["params"] == list(names) and m.details["num_params"] == h.shape[0] == 15
    assert abs(m.value - float(torch.trace(h))) <= 5 * math.sqrt(rademacher_variance(h) / 50)


def test_tol_stops_early():
    model, batch = tiny_mlp(), tiny_batch()
    m = hessian_trace(model, batch, probes=200, tol=0.5, min_probes=5, quiet=True)
    used = m.details["probes_used"]
    assert 5 <= used < 200 and m.details["stopped_early"]
    assert m.details["std_error"] <= 0.5 * abs(m.value)
    # and the early estimate is still within its own (known-variance) bound
    h = hessian()
    assert abs(m.value - float(torch.trace(h))) <= 5 * math.sqrt(rademacher_variance(h) / used)
    # a tight tol runs the whole budget
    m = hessian_trace(model, batch, probes=30, tol=1e-9, quiet=True)
    assert m.details["probes_used"] == 30 and not m.details["stopped_early"]


def test_hutch_pp_exact_when_the_sketch_spans_the_space():
    model, batch = tiny_mlp(), tiny_batch()
    h = hessian()
    m = hessian_trace(model, batch, probes=3 * 39, tol=0, method="hutch++", quiet=True)
    tr = float(torch.trace(h))
    assert abs(m.value - tr) <= 1e-8 * abs(tr)
    assert m.details["sketch_size"] == 39 and m.details["std_error"] == 0.0


def test_hutch_pp_exact_on_a_small_subset():
    model, batch = tiny_mlp(), tiny_batch()
    h = hessian(("2.bias",))
    m = hessian_trace(model, batch, params="2.bias", probes=9, tol=0, method="hutch++", quiet=True)
    tr = float(torch.trace(h))
    assert abs(m.value - tr) <= 1e-8 * abs(tr)


def test_hutch_pp_within_its_bound():
    model, (x, y) = tiny_mlp(), tiny_batch()
    h = hessian()
    probes = 30
    m = hessian_trace(model, three_batches(x, y), probes=probes, tol=0, method="hutch++", quiet=True)
    stochastic = probes - 2 * (probes // 3)
    assert m.details["stochastic_probes"] == stochastic and m.details["probes_used"] == probes
    # Given the sketch Q, the estimate is tr(Q^T H Q) plus Hutchinson on P H P (P = I - Q Q^T),
    # unbiased with variance 2(||PHP||_F^2 - sum diag^2) / s <= 2 ||H||_F^2 / s.
    bound = 5 * math.sqrt(2 * float((h**2).sum()) / stochastic)
    assert abs(m.value - float(torch.trace(h))) <= bound


def test_deterministic_given_seed():
    model, batch = tiny_mlp(), tiny_batch()
    a = hessian_trace(model, batch, probes=12, seed=3, quiet=True)
    b = hessian_trace(model, batch, probes=12, seed=3, quiet=True)
    assert a.value == b.value


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"probes": 0}, "probes: expected an integer >= 1"),
        ({"probes": 2, "method": "hutch++"}, "probes: hutch\\+\\+ .* needs probes >= 3"),
        ({"tol": -0.1}, "tol: expected a non-negative"),
        ({"tol": float("nan")}, "tol: expected a non-negative"),
        ({"method": "girard"}, "method: expected one of 'hutchinson', 'hutch\\+\\+'"),
        ({"min_probes": 1}, "min_probes: expected an integer >= 2"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian_trace(tiny_mlp(), tiny_batch(), quiet=True, **kwargs)


def test_bad_data_and_model():
    with pytest.raises(ValueError, match="no batches"):
        hessian_trace(tiny_mlp(), [], quiet=True)
    with pytest.raises(ValueError, match=r"logits of shape \[N, classes\]"):
        hessian_trace(ThreeDOutput(), tiny_batch(), quiet=True)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_model_left_unchanged(method):
    model, batch = tiny_mlp(), tiny_batch()
    model.train()
    model[2].bias.requires_grad_(False)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[2].register_forward_pre_hook(lambda mod, inp: None)
    modes = [m.training for m in model.modules()]
    weights = [t.clone() for t in model.state_dict().values()]
    req = [p.requires_grad for p in model.parameters()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    hessian_trace(model, batch, probes=9, method=method, quiet=True)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(weights, model.state_dict().values()))
    assert [p.requires_grad for p in model.parameters()] == req
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()] == hooks
