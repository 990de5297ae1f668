"""hessian_eigenvalues against torch.linalg.eigvalsh of the dense autograd Hessian."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from conftest import ThreeDOutput, dense_hessian, mnist_softmax_regression, tiny_batch, tiny_mlp
from flatplug.measures import hessian_eigenvalues

# With tol=1e-7 (default stopping="residual") every Ritz value's error bound is <= 1e-7 * |theta|,
# and the top-k Ritz values are lower bounds of the top-k eigenvalues (Cauchy interlacing):
# 1e-4 relative leaves room only for float64 rounding.
TOL = 1e-7
REL = 1e-4


@functools.lru_cache(maxsize=None)
def spectrum(names: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense Hessian and its ascending eigenvalues for the default tiny net and batch."""
    h = dense_hessian(tiny_mlp(), *tiny_batch(), list(names) if names else None)
    return h, torch.linalg.eigvalsh(h)


def three_batches(x, y):
    return [(x[:5], y[:5]), (x[5:11], y[5:11]), (x[11:], y[11:])]


def assert_rel_close(got: list[float], expected: torch.Tensor) -> None:
    assert len(got) == expected.numel()
    exp = expected.tolist()
    for g, e in zip(got, exp):
        assert abs(g - e) <= REL * abs(e), (got, exp)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("split", [False, True])
def test_top_eigenvalues_all_params(k, split):
    model, (x, y) = tiny_mlp(), tiny_batch()
    _, ev = spectrum()
    data = three_batches(x, y) if split else (x, y)
    m = hessian_eigenvalues(model, data, k=k, tol=TOL, quiet=True)
    expected = ev.flip(0)[:k]
    assert_rel_close(m.details["eigenvalues"], expected)
    assert m.value == m.details["eigenvalues"][0]
    assert m.details["num_params"] == 39
    assert m.details["params"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert m.details["k"] == k and m.details["tol"] == TOL
    assert m.details["converged"]
    assert m.details["hvp_count"] == m.details["iterations"] <= 39
    json.dumps(m.details)


@pytest.mark.parametrize("spec", ["names", "module", "tensors"])
@pytest.mark.parametrize("split", [False, True])
def test_top_eigenvalues_param_subset(spec, split):
    model, (x, y) = tiny_mlp(), tiny_batch()
    params, names = {
        "names": (["0.weight", "2.bias"], ("0.weight", "2.bias")),
        "module": (model[2], ("2.weight", "2.bias")),
        "tensors": ([model[0].weight, model[0].bias], ("0.weight", "0.bias")),
    }[spec]
    _, ev = spectrum(names)
    data = three_batches(x, y) if split else (x, y)
    k = 3
    m = hessian_eigenvalues(model, data, k=k, params=params, tol=TOL, quiet=True)
    assert m.details["params"] == list(names)
    assert m.details["num_params"] == ev.numel()
    assert_rel_close(m.details["eigenvalues"], ev.flip(0)[:k])


def test_which_magnitude_and_smallest():
    model, batch = tiny_mlp(), tiny_batch()
    _, ev = spectrum()
    by_mag = ev[torch.argsort(ev.abs(), descending=True)][:3]
    # this net's most negative eigenvalue outranks its second largest in magnitude
    assert by_mag[1] < 0
    m = hessian_eigenvalues(model, batch, k=3, which="magnitude", tol=TOL, quiet=True)
    assert_rel_close(m.details["eigenvalues"], by_mag)
    m = hessian_eigenvalues(model, batch, k=2, which="smallest", tol=TOL, quiet=True)
    assert_rel_close(m.details["eigenvalues"], ev[:2])
    assert m.value < 0


@pytest.mark.parametrize("k", [1, 4])
def test_eigenvectors_satisfy_the_eigen_equation(k):
    """stopping="residual" bounds the eigenvectors' residuals by tol; the default rule reports the
    true residuals (guards a residual estimate that drifts from ||H v - lambda v||)."""
    model, batch = tiny_mlp(), tiny_batch()
    h, _ = spectrum()
    m = hessian_eigenvalues(model, batch, k=k, tol=TOL, return_eigenvectors=True, quiet=True, stopping="residual")
    vecs = m.artifacts["eigenvectors"]
    assert vecs.shape == (k, 39)
    assert torch.allclose(vecs.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-12)
    for lam, v in zip(m.details["eigenvalues"], vecs):
        # ||H v - lambda v|| is the Ritz residual, <= tol * |lambda| at convergence (+ rounding)
        assert float((h @ v - lam * v).norm()) <= TOL * abs(lam) + 1e-12 * float(h.norm())

    by_param = m.artifacts["eigenvectors_by_param"]
    assert len(by_param) == k
    for name, p in model.named_parameters():
        assert by_param[0][name].shape == p.shape
    assert torch.equal(torch.cat([t.reshape(-1) for t in by_param[0].values()]), vecs[0])
    m2 = hessian_eigenvalues(model, batch, k=k, tol=1e-3, return_eigenvectors=True, quiet=True)
    for lam, v, r in zip(m2.details["eigenvalues"], m2.artifacts["eigenvectors"], m2.details["residuals"]):
        assert float((h @ v - lam * v).norm()) == pytest.approx(r, rel=1e-6, abs=1e-12 * float(h.norm()))


def test_float32_model():
    model, batch = tiny_mlp().float(), tiny_batch()
    _, ev = spectrum()
    m = hessian_eigenvalues(model, batch, k=2, tol=1e-5, quiet=True)
    # float32 products carry ~1e-6 relative rounding; the residual tolerance adds 1e-5
    for g, e in zip(m.details["eigenvalues"], ev.flip(0)[:2].tolist()):
        assert abs(g - e) <= 1e-4 * abs(e)


def test_deterministic_given_seed():
    model, batch = tiny_mlp(), tiny_batch()
    a = hessian_eigenvalues(model, batch, k=2, seed=7, quiet=True)
    b = hessian_eigenvalues(model, batch, k=2, seed=7, quiet=True)
    assert a.details["eigenvalues"] == b.details["eigenvalues"]
    assert a.details["iterations"] == b.details["iterations"]


def test_max_iter_caps_the_products():
    model, batch = tiny_mlp(), tiny_batch()
    m = hessian_eigenvalues(model, batch, k=2, tol=1e-12, max_iter=4, quiet=True)
    assert m.details["iterations"] == 4 and m.details["hvp_count"] == 4
    assert not m.details["converged"]
    _, ev = spectrum()
    # Ritz values of a Krylov space are lower bounds of the top eigenvalues (interlacing)
    assert m.details["eigenvalues"][0] <= float(ev[-1]) * (1 + 1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k: expected an integer >= 1"),
        ({"k": 1.5}, "k: expected an integer"),
        ({"k": 40}, r"k: asked for 40 eigenvalues of a 39-dimensional Hessian"),
        ({"tol": 0}, "tol: expected a positive"),
        ({"tol": -1e-3}, "tol: expected a positive"),
        ({"which": "biggest"}, "which: expected one of"),
        ({"max_iter": 0}, "max_iter: expected an integer >= 1"),
        ({"k": 3, "max_iter": 2}, "max_iter: must be at least k=3"),
        ({"params": "fc9"}, "params: the model has no parameter or module named"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian_eigenvalues(tiny_mlp(), tiny_batch(), quiet=True, **kwargs)


def test_bad_data_and_model():
    with pytest.raises(ValueError, match="no batches"):
        hessian_eigenvalues(tiny_mlp(), [], quiet=True)
    with pytest.raises(ValueError, match=r"logits of shape \[N, classes\]"):
        hessian_eigenvalues(ThreeDOutput(), tiny_batch(), quiet=True)


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "weights": [t.detach().clone() for t in model.state_dict().values()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["modes"] == b["modes"] and a["requires_grad"] == b["requires_grad"] and a["hooks"] == b["hooks"]
    assert all(torch.equal(s, t) for s, t in zip(a["weights"], b["weights"]))
    assert all((s is None and t is None) or torch.equal(s, t) for s, t in zip(a["grads"], b["grads"]))


@pytest.mark.parametrize("split", [False, True])
def test_model_left_unchanged(split):
    model, (x, y) = tiny_mlp(), tiny_batch()
    model.train()
    model[0].weight.requires_grad_(False)
    model[2].weight.grad = torch.full_like(model[2].weight, 0.5)
    model[0].register_forward_hook(lambda mod, inp, out: None)
    before = snapshot(model)
    data = three_batches(x, y) if split else (x, y)
    hessian_eigenvalues(model, data, k=2, params=[model[0].weight, "2"], return_eigenvectors=True, quiet=True)
    assert_same(before, snapshot(model))
    assert model.training


def test_change_stopping_stops_earlier_and_stays_close():
    """PyHessian's stopping rule: fewer products than the residual test, eigenvalues still near the dense ones."""
    net, (x, y) = tiny_mlp(d_in=6, hidden=8, classes=4, seed=3), tiny_batch(40, 6, 4, seed=4)
    dense = torch.linalg.eigvalsh(dense_hessian(net, x, y)).flip(0)
    strict = hessian_eigenvalues(net, (x, y), k=3, tol=1e-8, max_iter=200, quiet=True)
    loose = hessian_eigenvalues(net, (x, y), k=3, tol=1e-3, max_iter=200, quiet=True, stopping="change")
    assert loose.details["stopping"] == "change" and loose.details["hvp_count"] < strict.details["hvp_count"]
    for got, want in zip(loose.details["eigenvalues"], dense[:3].tolist()):
        assert got == pytest.approx(want, rel=2e-2)
    with pytest.raises(ValueError, match="stopping"):
        hessian_eigenvalues(net, (x, y), stopping="lazy")


@functools.lru_cache(maxsize=None)
def wider_problem():
    net, (x, y) = tiny_mlp(d_in=6, hidden=8, classes=4, seed=3), tiny_batch(40, 6, 4, seed=4)
    return net, x, y, torch.linalg.eigvalsh(dense_hessian(net, x, y))


@pytest.mark.parametrize("stopping", ["residual", "bound"])
@pytest.mark.parametrize("which", ["largest", "smallest"])
@pytest.mark.parametrize("k", [1, 3])
def test_tol_is_the_relative_error_of_the_eigenvalues(which, k, stopping):
    """Both error-bounding rules: each Ritz value lies within its reported bound of an eigenvalue of the
    dense Hessian (eigvalsh), the bound is within tol * |lambda|, and at tol <= 1e-3 the k values
    are the k extreme eigenvalues to tol (guards a bound that does not bound, e.g. a gap taken too
    large, or a stop before the bound meets tol). At tol = 1e-2 a stop can come before Lanczos has
    resolved an eigenvalue close to the k-th (seen: the 3rd smallest here), which no Krylov bound
    can see; the docstring of ``ritz_error_bounds`` says so."""
    net, x, y, ev = wider_problem()
    exact = (ev.flip(0) if which == "largest" else ev)[:k]
    slack = 1e-12 * float(ev.abs().max())
    for tol in (1e-2, 1e-3, 1e-5):
        for seed in range(2):
            m = hessian_eigenvalues(net, (x, y), k=k, tol=tol, max_iter=92, which=which, seed=seed, quiet=True,
                                    stopping=stopping)
            assert m.details["converged"] and m.details["stopping"] == stopping
            got = torch.tensor(m.details["eigenvalues"], dtype=torch.float64)
            nearest = (got[:, None] - ev[None, :]).abs().min(dim=1).values
            bounds = torch.tensor(m.details["error_bounds"], dtype=torch.float64)
            assert (nearest <= bounds + slack).all(), (tol, seed, nearest, bounds)
            assert (bounds <= tol * got.abs()).all()
            if tol <= 1e-3:
                assert ((got - exact).abs() <= tol * exact.abs() + slack).all(), (tol, seed, got, exact)


def test_bound_rule_needs_fewer_products_than_the_residual_rule():
    """The residual-gap bound r^2/gap reaches a given tol long before the residual r itself does
    (guards a bound rule that silently fell back to the residual)."""
    net, x, y, ev = wider_problem()
    for k in (1, 3):
        bound = hessian_eigenvalues(net, (x, y), k=k, tol=1e-6, max_iter=92, quiet=True, stopping="bound")
        residual = hessian_eigenvalues(net, (x, y), k=k, tol=1e-6, max_iter=92, quiet=True)
        assert residual.details["stopping"] == "residual"
        assert bound.details["hvp_count"] < residual.details["hvp_count"]
        for a, b in zip(bound.details["eigenvalues"], ev.flip(0)[:k].tolist()):
            assert a == pytest.approx(b, rel=1e-6)


@pytest.mark.parametrize("hvp", ["double-backward", "forward-over-reverse"])
def test_hvp_paths_give_the_dense_eigenvalues(hvp):
    """Both ways of computing products find the dense Hessian's top eigenvalues (guards a wrong
    product in either path), and the measure records which one ran."""
    net, x, y, ev = wider_problem()
    m = hessian_eigenvalues(net, [(x[:25], y[:25]), (x[25:], y[25:])], k=2, tol=1e-8, max_iter=92, quiet=True, hvp=hvp)
    assert m.details["hvp"] == hvp
    assert_rel_close(m.details["eigenvalues"], ev.flip(0)[:2])
    with pytest.raises(ValueError, match="hvp: expected one of"):
        hessian_eigenvalues(net, (x, y), hvp="fast")


def test_default_rule_finds_the_top_eigenvalue_where_the_bound_rule_stops_on_the_second():
    """Real data, defaults only: on a trained MNIST softmax regression (the Hessian of Yamada et
    al.'s setting, multi-class) the default rule returns the dense Hessian's top eigenvalue to
    tol on every one of 30 seeds. The "bound" rule stops a product or two earlier and, on some
    seeds, on the second eigenvalue (3.3% lower) with an error bound below tol: the wanted one
    had not yet emerged from the Krylov space, which no a-posteriori bound can see. That is why
    the residual rule is the default (this test fails if the default goes back to "bound")."""
    model, x, y, h = mnist_softmax_regression()
    ev = torch.linalg.eigvalsh(h).flip(0)
    top, second = float(ev[0]), float(ev[1])
    assert (top - second) / top > 0.02  # the setting this test is about: two close, distinct eigenvalues
    bound_errors = []
    for seed in range(30):
        m = hessian_eigenvalues(model, (x, y), seed=seed, quiet=True)
        assert m.details["stopping"] == "residual" and m.details["converged"]
        assert abs(m.value - top) <= 1e-3 * top, (seed, m.value, top)
        b = hessian_eigenvalues(model, (x, y), seed=seed, quiet=True, stopping="bound")
        assert b.details["error_bounds"][0] <= 1e-3 * abs(b.value)  # what the bound rule claims
        bound_errors.append(abs(b.value - top) / top)
    assert max(bound_errors) > 0.02, bound_errors
