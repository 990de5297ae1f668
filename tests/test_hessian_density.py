"""hessian_density (stochastic Lanczos quadrature) against the dense autograd Hessian's spectrum."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

from conftest import ThreeDOutput, dense_hessian, quadratic_problem, tiny_batch, tiny_mlp, with_spectrum
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


# -- a known spectrum: SLQ's nodes, weights and moments against exact quantities ------------------------------------
#
# conftest's Quadratic model with a loss 0.5 (w - t)^T A (w - t) has the Hessian A = U diag(lambda) U^T exactly. SLQ's
# run r starts Lanczos from the unit vector v_r: the documented draw is the r-th standard-normal vector of
# torch.Generator().manual_seed(seed), normalised (no other draws: restart=False). The quadrature of that run then
# satisfies sum_j w_j theta_j^k = v_r^T A^k v_r for k <= 2m - 1 (m Lanczos steps), and once m reaches the number of
# distinct eigenvalues the nodes are those eigenvalues and w_lambda = ||P_lambda v_r||^2 (P_lambda: the projector
# onto lambda's eigenspace).

DISTINCT = [-2.0, -0.5, 0.0, 0.25, 1.0, 3.0]
MULTIPLICITY = [2, 1, 2, 3, 3, 1]  # 12 parameters, 3 negative eigenvalues, a 2-fold zero


@functools.lru_cache(maxsize=None)
def known_spectrum():
    ev = [lam for lam, m in zip(DISTINCT, MULTIPLICITY) for _ in range(m)]
    a, u = with_spectrum(ev, seed=11)
    return a, u, torch.tensor(ev, dtype=torch.float64)


def start_vectors(runs: int, seed: int, dim: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.stack([torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(runs)])
    return v / v.norm(dim=1, keepdim=True)


def eigenspace_weights(v: torch.Tensor) -> torch.Tensor:
    """||P_lambda v||^2 for each distinct eigenvalue (rows: start vectors)."""
    _, u, ev = known_spectrum()
    c = (v @ u) ** 2  # squared coordinates in the eigenbasis
    return torch.stack([c[:, ev == lam].sum(1) for lam in DISTINCT], 1)


def grouped(nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weights summed per distinct eigenvalue; every node must be (within 1e-9) one of them."""
    lams = torch.tensor(DISTINCT, dtype=torch.float64)
    nearest = (nodes[:, None] - lams[None, :]).abs().argmin(1)
    assert torch.allclose(nodes, lams[nearest], rtol=0, atol=1e-9), nodes
    return torch.zeros(len(DISTINCT), dtype=torch.float64).index_add_(0, nearest, weights)


def test_slq_nodes_weights_and_negative_mass_on_a_known_spectrum():
    """With iterations >= the 6 distinct eigenvalues the Krylov space of each run is exhausted after 6 steps: its
    nodes are the distinct eigenvalues and its weights the squared projections of its start vector; the first and
    second moments, the trace estimate and the negative mass follow exactly. The 2-fold zero eigenvalue (rounded to
    +-1e-16) must not count as negative curvature. (When rounding hides the exhaustion, beta ~ 1e-13, Lanczos goes on
    in the orthogonal complement: further copies of the same eigenvalues with weights ~ beta^2, hence the grouping.)

    Guards against wrong quadrature weights (first eigenvector components not squared, the last component instead
    of the first, unnormalised), nodes that are not the Ritz values, an unweighted first moment, and a negative mass
    that counts nodes instead of weighing them or that counts rounding-level zeros."""
    a, _, _ = known_spectrum()
    model, batch, loss_fn = quadratic_problem(a, seed=3)
    runs, seed = 3, 4
    m = hessian_density(model, batch, iterations=12, runs=runs, seed=seed, loss_fn=loss_fn, quiet=True)
    assert m.details["num_params"] == 12 and all(6 <= i <= 12 for i in m.details["iterations_per_run"])
    assert 6 in m.details["iterations_per_run"]
    v = start_vectors(runs, seed)
    expected_w = eigenspace_weights(v)
    for r in range(runs):
        nodes = torch.tensor(m.details["nodes"][r], dtype=torch.float64)
        weights = torch.tensor(m.details["weights"][r], dtype=torch.float64)
        assert torch.allclose(grouped(nodes, weights), expected_w[r], rtol=0, atol=1e-12)
        quad = [v[r] @ a @ v[r], v[r] @ a @ a @ v[r]]
        assert float((weights * nodes).sum()) == pytest.approx(float(quad[0]), abs=1e-12)
        assert float((weights * nodes**2).sum()) == pytest.approx(float(quad[1]), abs=1e-12)
        assert m.details["first_moment_per_run"][r] == pytest.approx(float(quad[0]), abs=1e-12)
    first = float(torch.einsum("ri,ij,rj->r", v, a, v).mean())
    assert m.value == pytest.approx(first, abs=1e-12)
    assert m.details["trace_estimate"] == pytest.approx(12 * first, abs=1e-11)
    negative = float(expected_w[:, :2].sum(1).mean())  # the eigenspaces of -2 and -0.5
    assert m.details["negative_mass"] == pytest.approx(negative, abs=1e-12)
    assert m.details["lambda_min"] == pytest.approx(-2.0, abs=1e-9)
    assert m.details["lambda_max"] == pytest.approx(3.0, abs=1e-9)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_gauss_quadrature_is_exact_to_degree_2m_minus_1(iterations):
    """With m < 6 Lanczos steps the nodes are not the eigenvalues, but an m-point Gauss quadrature of the start
    vector's spectral measure still integrates polynomials of degree <= 2m - 1 exactly: sum_j w_j theta_j^k =
    v^T A^k v for k = 0..2m-1. Guards against a wrong tridiagonal (e.g. a dropped or mis-indexed beta, which leaves
    the first moment right but breaks the higher ones) and wrong weights."""
    a, _, _ = known_spectrum()
    model, batch, loss_fn = quadratic_problem(a, seed=5)
    m = hessian_density(model, batch, iterations=iterations, runs=2, seed=6, loss_fn=loss_fn, quiet=True)
    v = start_vectors(2, 6)
    for r in range(2):
        nodes = torch.tensor(m.details["nodes"][r], dtype=torch.float64)
        weights = torch.tensor(m.details["weights"][r], dtype=torch.float64)
        assert nodes.numel() == iterations
        ak_v = v[r].clone()
        for k in range(2 * iterations):
            assert float((weights * nodes**k).sum()) == pytest.approx(float(v[r] @ ak_v), abs=1e-11), k
            ak_v = a @ ak_v
        # one degree more is not integrated exactly (the check above would also pass for the eigenvalues)
        assert abs(float((weights * nodes ** (2 * iterations)).sum()) - float(v[r] @ ak_v)) > 1e-6


def test_density_mass_and_weights_average_to_the_multiplicities():
    """Independent of how start vectors are drawn: for v uniform on the sphere, E ||P_lambda v||^2 = m_lambda / n
    (a Beta(m/2, (n-m)/2) variable: variance 2 p (1 - p) / (n + 2)), so the run-averaged weight of each eigenvalue
    and the negative mass (3/12) match the multiplicities within 5 standard errors; and the smoothed density puts
    that weight around each eigenvalue (sigma = 0.01, eigenvalues >= 0.25 apart: its mass below -0.25 is the
    negative mass up to Gaussian tails of 25 sigma). Guards against a density built from the wrong weights (checked:
    uniform weights per node fail) without relying on the draw order; subtler weighting errors (unsquared eigenvector
    components, off by ~0.04 here) are left to the exact test above."""
    a, _, _ = known_spectrum()
    model, batch, loss_fn = quadratic_problem(a, seed=7)
    runs = 60
    m = hessian_density(model, batch, iterations=6, runs=runs, seed=8, sigma=0.01, grid_points=4000,
                        loss_fn=loss_fn, quiet=True)
    weights = torch.tensor(m.details["weights"], dtype=torch.float64)  # [runs, 6]
    for j, mult in enumerate(MULTIPLICITY):
        p = mult / 12
        se = math.sqrt(2 * p * (1 - p) / 14 / runs)
        assert abs(float(weights[:, j].mean()) - p) <= 5 * se, (DISTINCT[j], float(weights[:, j].mean()), p)
    p = 3 / 12
    assert abs(m.details["negative_mass"] - p) <= 5 * math.sqrt(2 * p * (1 - p) / 14 / runs)
    grid = torch.tensor(m.details["grid"], dtype=torch.float64)
    dens = torch.tensor(m.details["density"], dtype=torch.float64)
    below = grid <= -0.25
    mass_below = float(torch.trapezoid(dens[below], grid[below]))
    assert mass_below == pytest.approx(m.details["negative_mass"], abs=2e-3)


def test_negative_mass_counts_curvature_resolved_from_zero_not_the_bulk_nodes_sign():
    """A trained network's spectrum: a bulk of 900 near-zero eigenvalues of both signs (centred a hair
    below zero), 90 positive outliers up to 1 and 10 negative ones from -0.5 to -0.05. SLQ puts most of
    the weight on one Gauss node for the bulk, a hair below zero, and counting that node's sign gave a
    negative mass near 0.9 (87% on trades_smallcnn: notes/audit_figures.py). The negative mass must be the weight of the
    eigenvalues below -sigma, here the 10 outliers: 1% (the same Beta bound as above, 4 runs)."""
    g = torch.Generator().manual_seed(3)
    bulk = (torch.rand(900, generator=g, dtype=torch.float64) * 3e-4 - 2e-4)
    outliers = torch.linspace(0.01, 1.0, 90, dtype=torch.float64)
    negative = -torch.linspace(0.05, 0.5, 10, dtype=torch.float64)
    ev = torch.cat([bulk, outliers, negative])
    a, _ = with_spectrum(ev, seed=4)
    model, batch, loss_fn = quadratic_problem(a, seed=9)
    runs = 4
    m = hessian_density(model, batch, loss_fn=loss_fn, iterations=60, runs=runs, quiet=True)
    sigma = m.details["sigma"]
    assert 1e-3 < sigma < 0.05 and m.details["negative_below"] == -sigma
    p = float((ev < -sigma).double().mean())
    assert p == pytest.approx(0.01)
    n = ev.numel()
    bound = 5 * math.sqrt(2 * p * (1 - p) / (n + 2) / runs)
    assert abs(m.details["negative_mass"] - p) <= bound, m.details["negative_mass"]
