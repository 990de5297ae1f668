"""local_flatness: exact on linear losses, bracketed by the clean gradient norm and a spectral bound on MLPs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flatplug.measures import local_flatness
from flatplug.measures.local_flatness import ascent_point, max_gradient_norm_point
from conftest import tiny_mlp

ORDERS = {1: 1.0, 2: 2.0, "inf": math.inf}


def neg_logit(logits, y):
    return -logits.gather(1, y[:, None]).squeeze(1)


def unit_batch(n=10, d=5, classes=3, seed=1, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, d, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)


def grad_norms(model, x, y, q, loss_fn=None):
    """Per-sample ||d loss / d x||_q by plain autograd."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    losses = F.cross_entropy(logits, y, reduction="none") if loss_fn is None else loss_fn(logits, y)
    (g,) = torch.autograd.grad(losses.sum(), x)
    return torch.linalg.vector_norm(g.reshape(len(x), -1), ord=q, dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("q", [1, 2, "inf"])
def test_linear_loss_gives_the_constant_gradient_norm(norm, q):
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    x, y = unit_batch(8, 6, 4, lo=0.4, hi=0.6)  # no clipping is active for eps = 0.05
    m = local_flatness(model, (x, y), eps=0.05, norm=norm, q=q, steps=5, loss_fn=neg_logit, quiet=True)
    expected = torch.linalg.vector_norm(model.weight.detach()[y], ord=ORDERS[q], dim=1)
    assert torch.allclose(m.per_sample, expected, rtol=1e-14, atol=0)
    assert m.value == pytest.approx(float(expected.mean()), rel=1e-14)
    assert m.details["grad_norm_at_x"] == pytest.approx(float(expected.mean()), rel=1e-14)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("q", [1, 2, "inf"])
def test_mlp_bracketed_by_clean_norm_and_spectral_bound(norm, q):
    model = tiny_mlp(d_in=5, hidden=6, classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # curved enough that the ascent moves
    x, y = unit_batch(12, 5, 3)
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    m = local_flatness(model, batches, eps=0.1, norm=norm, q=q, steps=8, quiet=True)
    at_x = grad_norms(model, x, y, ORDERS[q])
    assert torch.all(m.per_sample >= at_x * (1 - 1e-12))
    assert bool((m.per_sample > at_x * (1 + 1e-6)).any())  # the ascent found steeper points
    # grad = W1^T diag(tanh') W2^T (p - e_y), |tanh'| <= 1, ||p - e_y||_2 <= sqrt(2)
    s1 = torch.linalg.matrix_norm(model[0].weight.detach(), ord=2)
    s2 = torch.linalg.matrix_norm(model[2].weight.detach(), ord=2)
    l2_bound = float(s1 * s2) * math.sqrt(2)
    bound = {1: math.sqrt(5) * l2_bound, 2: l2_bound, "inf": l2_bound}[q]
    assert float(m.per_sample.max()) <= bound
    assert m.details["grad_norm_at_x"] == pytest.approx(float(at_x.mean()), rel=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_max_point_reports_its_own_gradient_norm(norm):
    model = tiny_mlp(d_in=4, hidden=5, classes=3)
    x, y = unit_batch(9, 4, 3, seed=3)
    x_best, best = max_gradient_norm_point(model, x, y, eps=0.2, norm=norm, q=2, steps=6,
                                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(best, grad_norms(model, x_best, y, 2.0), rtol=1e-12, atol=0)
    delta = (x_best - x).reshape(len(x), -1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= 0.2 + 1e-12)
    assert x_best.min() >= 0 and x_best.max() <= 1


@pytest.mark.parametrize("maximiser", [max_gradient_norm_point, ascent_point])
def test_helpers_keep_mode_and_requires_grad_and_leave_no_grads(maximiser):
    """The maximisers freeze the weights while they ascend (speed); they must give them back as found."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.0), nn.Linear(6, 3)).double()
    model.train()
    model[0].bias.requires_grad_(False)
    x, y = unit_batch(5, 4, 3)
    maximiser(model, x, y, eps=0.1, steps=3, generator=torch.Generator().manual_seed(1))
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]


def test_ascent_point_is_the_last_iterate_and_the_measure_keeps_the_best():
    """ascent_point returns the last iterate (as the official code's training); max_gradient_norm_point
    the best point seen: on a curved MLP with a large step the two differ, and the best point's norm
    is the largest of every iterate's norm (each recomputed by plain autograd)."""
    model = tiny_mlp(d_in=5, hidden=6, classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    x, y = unit_batch(12, 5, 3)
    kw = dict(eps=0.2, norm="linf", q=1, step_size=0.15, random_start=False)
    iterates = [x] + [ascent_point(model, x, y, steps=k, **kw) for k in range(1, 6)]
    norms = torch.stack([grad_norms(model, p, y, 1.0) for p in iterates])
    x_best, best = max_gradient_norm_point(model, x, y, steps=5, **kw)
    assert torch.allclose(best, norms.max(0).values, rtol=1e-12, atol=0)
    assert torch.allclose(grad_norms(model, x_best, y, 1.0), best, rtol=1e-12, atol=0)
    assert bool((norms[-1] < norms.max(0).values * (1 - 1e-6)).any())  # the last iterate is not always the best


def test_zero_eps_is_the_clean_gradient_norm():
    model = tiny_mlp()
    x, y = unit_batch(6, 5, 3)
    m = local_flatness(model, (x, y), eps=0.0, q=1, quiet=True)
    assert torch.allclose(m.per_sample, grad_norms(model, x, y, 1.0), rtol=1e-12, atol=0)


def test_model_left_unchanged_and_deterministic():
    model = tiny_mlp()
    x, y = unit_batch(8, 5, 3)
    model.train()
    model[0].weight.requires_grad_(False)
    F.cross_entropy(model(x), y).backward()
    model[0].register_forward_hook(lambda *a: None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    hooks = dict(model[0]._forward_hooks)
    a = local_flatness(model, (x, y), eps=0.1, steps=4, seed=2, quiet=True)
    b = local_flatness(model, (x, y), eps=0.1, steps=4, seed=2, quiet=True)
    assert torch.equal(a.per_sample, b.per_sample)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert dict(model[0]._forward_hooks) == hooks


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 6),
    hidden=st.integers(1, 5),
    classes=st.integers(2, 4),
    eps=st.floats(0.0, 0.5),
    norm=st.sampled_from(["linf", "l2"]),
    q=st.sampled_from([1, 2, "inf"]),
    seed=st.integers(0, 1000),
)
def test_property_lf_at_least_clean_norm_and_points_in_ball(n, d, hidden, classes, eps, norm, q, seed):
    model = tiny_mlp(d_in=d, hidden=hidden, classes=classes, seed=seed)
    x, y = unit_batch(n, d, classes, seed=seed)
    x_best, best = max_gradient_norm_point(model, x, y, eps=eps, norm=norm, q=q, steps=3,
                                           generator=torch.Generator().manual_seed(seed))
    at_x = grad_norms(model, x, y, ORDERS[q])
    assert torch.all(best >= at_x * (1 - 1e-12))
    assert x_best.min() >= 0 and x_best.max() <= 1
    delta = (x_best - x).reshape(n, -1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= eps * (1 + 1e-12) + 1e-15)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"eps": -0.1}, ValueError, "eps"),
        ({"eps": float("nan")}, ValueError, "eps"),
        ({"eps": 0.1, "q": 3}, ValueError, "q: expected"),
        ({"eps": 0.1, "norm": "l1"}, ValueError, "norm"),
        ({"eps": 0.1, "steps": -1}, ValueError, "steps"),
        ({"eps": 0.1, "step_size": 0.0}, ValueError, "step_size"),
        ({"eps": 8}, ValueError, r"larger than the whole \[0, 1\] range .* e.g. 8/255"),  # accepted silently before
    ],
)
def test_bad_arguments(kwargs, err, match):
    x, y = unit_batch()
    with pytest.raises(err, match=match):
        local_flatness(tiny_mlp(), (x, y), quiet=True, **kwargs)
    for maximiser in (max_gradient_norm_point, ascent_point):
        with pytest.raises(err, match=match):
            maximiser(tiny_mlp(), x, y, **kwargs)


def test_inputs_must_be_in_unit_range():
    x, y = unit_batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        local_flatness(tiny_mlp(), (x * 255, y), eps=0.1, quiet=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        max_gradient_norm_point(tiny_mlp(), x - 0.5, y, eps=0.1)


# -- q defaults to the dual norm of the ball ------------------------------------------------------


@pytest.mark.parametrize("norm, dual", [("linf", 1), ("l2", 2)])
def test_q_defaults_to_the_dual_norm_of_the_ball(norm, dual):
    """On a linear loss the gradient norm is the constant ||W_y||_q: with q omitted it must be the
    dual norm's (1 for linf, 2 for l2). Guards against the old default q = 1 for an l2 ball."""
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    x, y = unit_batch(8, 6, 4, lo=0.4, hi=0.6)
    m = local_flatness(model, (x, y), eps=0.05, norm=norm, steps=3, loss_fn=neg_logit, quiet=True)
    expected = torch.linalg.vector_norm(model.weight.detach()[y], ord=dual, dim=1)
    assert torch.allclose(m.per_sample, expected, rtol=1e-14, atol=0)
    assert m.details["q"] == dual
    _, best = max_gradient_norm_point(model, x, y, eps=0.05, norm=norm, steps=2, loss_fn=neg_logit)
    assert torch.allclose(best, expected, rtol=1e-14, atol=0)


def test_scoring_an_l2_attack_measures_the_l2_dual_norm(tmp_path):
    """fp.score with an l2 attack: local flatness follows the attack's ball and norm, so q = 2 (its
    value equals a direct call with norm="l2", q=2 and differs from q=1). Real MNIST, a zoo model."""
    from flatplug.scoring import DatasetSpec, ModelSpec, score
    from flatplug.sources import ZooSource, load_mnist
    from conftest import shared_path

    from flatplug import list_plugins

    zoo, mnist = shared_path("models", "zoo.json"), shared_path("data", "mnist")
    # torchattacks' PGD is L-inf only: with the adapter installed the L2 attack is its PGDL2, else the core PGD
    attack = ({"name": "pgdl2", "eps": 1.0, "steps": 2} if "pgdl2" in list_plugins("attacks")
              else {"name": "pgd", "norm": "l2", "eps": 1.0, "steps": 2})
    frame = score([ModelSpec.of("zoo", "madry_cnn_tiny", manifest=str(zoo))], DatasetSpec("mnist", str(mnist), n=16),
                  measures={"local_flatness": {"steps": 2, "random_start": False}},
                  attack=attack, store=tmp_path / "r.db",
                  device="cpu", quiet=True)
    row = frame.set_index("name").loc["local_flatness"]
    assert row["status"] == "ok", row["error"]
    details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
    assert details["q"] == 2 and details["norm"] == "l2" and details["eps"] == 1.0
    model = ZooSource(zoo).load("madry_cnn_tiny").module
    x, y = load_mnist(mnist, n=16)
    direct = {q: local_flatness(model, (x, y), eps=1.0, norm="l2", q=q, steps=2, random_start=False, quiet=True).value
              for q in (1, 2)}
    assert row["value"] == pytest.approx(direct[2], rel=1e-5)
    assert direct[1] > 2 * direct[2]  # q = 1 is another number (measured 0.71 against 0.27)
