"""hessian_trace against the trace of the dense autograd Hessian, within bounds from the known variance."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

from conftest import ThreeDOutput, dense_hessian, quadratic_problem, tiny_batch, tiny_mlp, with_spectrum
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
    assert m.details["std_error"] <= 0.5 * abs(m.value) and m.details["converged"] is True
    assert m.details["relative_std_error"] == pytest.approx(m.details["std_error"] / abs(m.value))
    # and the early estimate is still within its own (known-variance) bound
    h = hessian()
    assert abs(m.value - float(torch.trace(h))) <= 5 * math.sqrt(rademacher_variance(h) / used)
    # a tight tol runs the whole budget
    m = hessian_trace(model, batch, probes=30, tol=1e-9, quiet=True)
    assert m.details["probes_used"] == 30 and not m.details["stopped_early"]
    assert m.details["converged"] is False  # said, not hidden: the value carries its relative_std_error


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


# -- references where the estimator's error is known: exact, or many standard errors below 10% -------------------------
#
# The 5-standard-error bounds above are wider than 10% of the trace on the tiny MLP (its Rademacher variance
# 4.5 against a trace of 1.07 would need ~25,000 probes for a 10% resolution), so the tests below use quadratic
# losses ``0.5 (w - t)^T A (w - t)`` (conftest's ``Quadratic``: the Hessian is ``A`` itself) and a linear softmax
# model whose dense autograd Hessian is nearly diagonal, sized so that an estimator biased by 10% fails.


def mixed_diagonal(dim: int = 25, seed: int = 0) -> torch.Tensor:
    """Diagonal entries of both signs and spread-out sizes (a trace that cancels in part)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(dim, generator=g, dtype=torch.float64) * 3 + 0.1
    d[::4] *= -1
    return d


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("probes, tol", [(1, 0), (7, 0), (40, 1e-3)])
def test_hutchinson_exact_on_a_diagonal_hessian(split, probes, tol):
    """For diagonal H every Rademacher probe gives v^T H v = sum_i H_ii v_i^2 = tr(H): the estimate is exact.

    Guards against a biased or mis-scaled estimator (e.g. half the trace, a mean over probes+1, the trace divided by
    the dimension) and against Gaussian instead of Rademacher probes (for which v^T D v != tr D), on the cached-graph
    and the streaming (several batches) paths. The zero standard error also stops ``tol`` runs at ``min_probes``.
    """
    d = mixed_diagonal()
    model, (x, y), loss_fn = quadratic_problem(torch.diag(d))
    data = [(x[:2], y[:2]), (x[2:], y[2:])] if split else (x, y)
    m = hessian_trace(model, data, probes=probes, tol=tol, loss_fn=loss_fn, quiet=True)
    tr = float(d.sum())
    assert abs(m.value - tr) <= 1e-12 * float(d.abs().sum())
    assert m.details["trace"] == m.value and m.details["num_params"] == 25
    assert m.details["mean_eigenvalue"] == pytest.approx(tr / 25, rel=1e-12)
    if probes > 1:
        assert m.details["std_error"] <= 1e-12 * float(d.abs().sum())
    if tol > 0:
        assert m.details["stopped_early"] and m.details["probes_used"] == 10  # min_probes


def test_hutchinson_exact_on_a_diagonal_subset_of_a_network():
    """The bias of a network's last layer under a loss that is a diagonal quadratic in it: H = diag(a) on that subset.

    Guards against a trace taken over the wrong parameters (the subset's H is exactly diag(a); the other parameters'
    Hessian is not diagonal) and against any bias of the estimator."""
    model = tiny_mlp()
    a = torch.tensor([2.0, -0.5, 1.25], dtype=torch.float64)
    loss_fn = lambda logits, y: 0.5 * (a * (logits - 0.3) ** 2).sum(1)  # noqa: E731
    m = hessian_trace(model, tiny_batch(), params="2.bias", probes=5, tol=0, loss_fn=loss_fn, quiet=True)
    assert abs(m.value - float(a.sum())) <= 1e-12 * float(a.abs().sum())
    assert m.details["params"] == ["2.bias"]


def dense_symmetric(dim: int, off: float, seed: int) -> torch.Tensor:
    """A dense symmetric matrix: the mixed-sign diagonal plus N(0, off^2) off-diagonal entries."""
    g = torch.Generator().manual_seed(seed + 100)
    e = torch.randn(dim, dim, generator=g, dtype=torch.float64) * off
    e = torch.triu(e, 1)
    return torch.diag(mixed_diagonal(dim, seed)) + e + e.T


def probes_for_ten_percent(h: torch.Tensor) -> int:
    """Probes such that 10% of |tr H| is 8 standard errors: a 4-SE bound keeps an unbiased estimate inside
    (two-sided p ~ 6e-5) and leaves a 10%-biased one outside unless its noise is 4 SE in its favour."""
    return math.ceil(64 * rademacher_variance(h) / (0.1 * float(torch.trace(h))) ** 2)


@pytest.mark.parametrize("split", [False, True])
def test_hutchinson_resolves_ten_percent_on_a_dense_quadratic(split):
    """Dense mixed-sign Hessian: |estimate - tr| <= 4 SE with SE from Var(v^T H v) = 2 sum_{i != j} H_ij^2, and
    4 SE <= 5% of the trace, so an estimator biased by 10% fails (checked: a mutant returning 0.9x the mean fails).
    Guards against bias that the loose tiny-MLP bounds let through."""
    a = dense_symmetric(25, 0.03, seed=1)
    probes = probes_for_ten_percent(a)
    assert probes <= 40  # the sizing keeps the test cheap
    model, (x, y), loss_fn = quadratic_problem(a, seed=2)
    data = [(x[:3], y[:3]), (x[3:], y[3:])] if split else (x, y)
    m = hessian_trace(model, data, probes=probes, tol=0, seed=4, loss_fn=loss_fn, quiet=True)
    tr = float(torch.trace(a))
    bound = 4 * math.sqrt(rademacher_variance(a) / probes)
    assert bound <= 0.05 * abs(tr)
    assert abs(m.value - tr) <= bound
    assert m.details["probes_used"] == probes


def test_hutchinson_resolves_ten_percent_on_a_network():
    """A linear softmax classifier on +-1 features: its dense autograd Hessian is nearly diagonal, so a few hundred
    probes resolve 10% of the trace (same sizing as above). Guards against bias on a real cross-entropy Hessian."""
    torch.manual_seed(0)
    model = nn.Linear(12, 6, bias=False).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 2, (100, 12), generator=g).double() * 2 - 1
    y = torch.randint(0, 6, (100,), generator=g)
    h = dense_hessian(model, x, y)
    probes = probes_for_ten_percent(h)
    assert probes <= 70
    m = hessian_trace(model, (x, y), probes=probes, tol=0, seed=1, quiet=True)
    tr = float(torch.trace(h))
    bound = 4 * math.sqrt(rademacher_variance(h) / probes)
    assert bound <= 0.05 * abs(tr)
    assert abs(m.value - tr) <= bound


@pytest.mark.parametrize("probes", [12, 20])
def test_hutch_pp_exact_when_the_rank_fits_the_sketch(probes):
    """H of rank 3 < sketch size << dim: the sketch H S spans range(H), so tr(Q^T H Q) = tr(H) and the deflated
    remainder P H P vanishes: the estimate is exact although the sketch does not span the space.

    Guards against a Hutch++ that drops the exact part (estimate ~0), that does not deflate the stochastic probes
    (estimate ~2 tr), or that sketches with the wrong operator."""
    a, _ = with_spectrum([4.0, -2.5, 1.5] + [0.0] * 27, seed=5)
    model, batch, loss_fn = quadratic_problem(a, seed=6)
    m = hessian_trace(model, batch, probes=probes, tol=0, method="hutch++", loss_fn=loss_fn, quiet=True)
    tr = float(torch.trace(a))
    assert m.details["sketch_size"] == probes // 3 < 30
    assert m.details["stochastic_probes"] == probes - 2 * (probes // 3)
    assert abs(m.value - tr) <= 1e-10 * 8.0
    assert abs(m.details["sketch_trace"] - tr) <= 1e-10 * 8.0


def test_hutch_pp_resolves_ten_percent_on_a_full_rank_hessian():
    """Full-rank dense H (eigenvalues in [0.75, 1.25], random basis): given the sketch Q the estimate is
    tr(Q^T H Q) + Hutchinson on P H P, unbiased with variance <= 2 ||P H P||_F^2 / s <= 2 ||H||_F^2 / s.
    Sized so that 4 such SE are under 5% of the trace: a 10% bias fails. Guards against a mis-weighted
    stochastic part (e.g. scaled by dim / (dim - sketch), or divided by the whole budget) and a dropped exact part."""
    ev = 0.75 + 0.5 * torch.rand(400, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a, _ = with_spectrum(ev, seed=7)
    model, batch, loss_fn = quadratic_problem(a, seed=8)
    probes = 108
    m = hessian_trace(model, batch, probes=probes, tol=0, method="hutch++", loss_fn=loss_fn, quiet=True)
    s = m.details["stochastic_probes"]
    assert s == 36 and m.details["sketch_size"] == 36
    tr = float(ev.sum())
    bound = 4 * math.sqrt(2 * float((a**2).sum()) / s)
    assert bound <= 0.05 * tr
    assert abs(m.value - tr) <= bound
