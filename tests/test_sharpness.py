"""sharpness: closed forms on an explicit quadratic, Taylor expansion on an MLP, statistics from known variances."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatplug as fp
from flatplug.measures import sharpness

from conftest import LinearLogit, Quadratic, dense_hessian, tiny_batch, tiny_mlp


def quadratic_loss(A: torch.Tensor, w0: torch.Tensor):
    def loss_fn(logits, y):
        d = logits - w0
        return 0.5 * ((d @ A) * d).sum(1)

    return loss_fn


def spd(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def quad_setup(eigs=(5.0, 2.0, 1.0, 0.5), seed=0):
    A = spd(eigs, seed)
    w0 = torch.tensor([0.8, -1.3, 0.5, 2.0][: len(eigs)], dtype=torch.float64)
    model = Quadratic(w0)
    x = torch.rand(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.zeros(6, dtype=torch.long)
    data = [(x[:4], y[:4]), (x[4:], y[4:])]  # two batches: the loss is accumulated
    return A, w0, model, data, quadratic_loss(A, w0)


def test_worst_l2_matches_top_eigenvalue():
    A, w0, model, data, loss_fn = quad_setup()
    rho = 0.3
    m = sharpness(model, data, rho=rho, kind="worst", adaptive=False, norm="l2", loss_fn=loss_fn, quiet=True)
    expected = rho**2 * float(torch.linalg.eigvalsh(A).max()) / 2
    assert m.value == pytest.approx(expected, rel=1e-3)
    assert m.value <= expected * (1 + 1e-12)  # never above the true maximum
    assert m.details["loss"] == pytest.approx(0.0, abs=1e-15)
    assert torch.equal(model.w.detach(), w0)


def test_worst_l2_adaptive_matches_scaled_top_eigenvalue():
    A, w0, model, data, loss_fn = quad_setup()
    rho = 0.2
    m = sharpness(model, data, rho=rho, kind="worst", adaptive=True, norm="l2", loss_fn=loss_fn, quiet=True)
    D = torch.diag(w0.abs())
    expected = rho**2 * float(torch.linalg.eigvalsh(D @ A @ D).max()) / 2
    plain = rho**2 * float(torch.linalg.eigvalsh(A).max()) / 2
    assert abs(expected - plain) > 0.05 * plain  # the two closed forms differ: the test tells them apart
    assert m.value == pytest.approx(expected, rel=1e-3)


def test_worst_linf_matches_best_hypercube_vertex():
    # a dominant direction u (clear eigengap); the maximum of a convex quadratic over a box is at a vertex
    u = torch.tensor([0.6, -0.3, 0.5, -0.55], dtype=torch.float64)
    B = torch.tensor([[1.0, 0.2, 0.0, -0.1], [0.2, 0.8, 0.1, 0.0], [0.0, 0.1, 0.6, 0.2], [-0.1, 0.0, 0.2, 0.9]],
                     dtype=torch.float64)
    A = 8.0 * torch.outer(u, u) + 0.3 * B
    w0 = torch.tensor([0.8, -1.3, 0.5, 2.0], dtype=torch.float64)
    model = Quadratic(w0)
    x, y = torch.ones(5, 2, dtype=torch.float64) / 2, torch.zeros(5, dtype=torch.long)
    rho = 0.1
    m = sharpness(model, (x, y), rho=rho, kind="worst", adaptive=False, norm="linf",
                  loss_fn=quadratic_loss(A, w0), quiet=True)
    vertices = torch.tensor(list(itertools.product([-rho, rho], repeat=4)), dtype=torch.float64)
    brute = float((0.5 * ((vertices @ A) * vertices).sum(1)).max())
    assert m.value == pytest.approx(brute, rel=1e-9)


def test_average_l2_matches_gaussian_expectation():
    A, w0, model, data, loss_fn = quad_setup()
    rho, n = 0.1, 400
    m = sharpness(model, data, rho=rho, kind="average", adaptive=False, norm="l2", samples=n,
                  loss_fn=loss_fn, quiet=True)
    mean = rho**2 * float(torch.trace(A)) / 2
    sd = math.sqrt(rho**4 * float(torch.trace(A @ A)) / 2 / n)  # Var(0.5 d^T A d) = rho^4 tr(A^2) / 2
    assert abs(m.value - mean) < 5 * sd
    assert m.details["std_error"] == pytest.approx(sd, rel=0.35)  # a sample sd of 400 draws


def test_average_linf_matches_uniform_expectation():
    A, w0, model, data, loss_fn = quad_setup()
    rho, n = 0.2, 400
    m = sharpness(model, data, rho=rho, kind="average", adaptive=False, norm="linf", samples=n,
                  loss_fn=loss_fn, quiet=True)
    s2, m4 = rho**2 / 3, rho**4 / 5  # moments of U[-rho, rho]
    mean = 0.5 * s2 * float(torch.trace(A))
    off = A - torch.diag(torch.diag(A))
    var = 0.25 * (float((torch.diag(A) ** 2).sum()) * (m4 - s2**2) + 2 * float((off**2).sum()) * s2**2)
    assert abs(m.value - mean) < 5 * math.sqrt(var / n)


def test_average_adaptive_scales_by_weights():
    A, w0, model, data, loss_fn = quad_setup()
    rho, n = 0.1, 400
    m = sharpness(model, data, rho=rho, kind="average", adaptive=True, norm="l2", samples=n,
                  loss_fn=loss_fn, quiet=True)
    DAD = torch.diag(w0.abs()) @ A @ torch.diag(w0.abs())
    mean = rho**2 * float(torch.trace(DAD)) / 2
    sd = math.sqrt(rho**4 * float(torch.trace(DAD @ DAD)) / 2 / n)
    assert abs(m.value - mean) < 5 * sd


def test_worst_l2_on_mlp_matches_second_order_taylor():
    """Away from a minimum: max_{|d|<=rho} L(w+d) - L(w) = rho |g| + rho^2/2 g^T H g / |g|^2 + O(rho^3)."""
    model = tiny_mlp()
    x, y = tiny_batch(12)
    rho = 1e-3
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]  # the full-data gradient is accumulated over batches
    m = sharpness(model, batches, rho=rho, adaptive=False, steps=10, quiet=True)
    params = list(model.parameters())
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(F.cross_entropy(model(x), y), params)])
    H = dense_hessian(model, x, y)
    u = g / g.norm()
    taylor = rho * float(g.norm()) + 0.5 * rho**2 * float(u @ H @ u)
    second = 0.5 * rho**2 * abs(float(u @ H @ u))
    assert second > 1e-8  # the second-order term is well above the tolerance below
    assert abs(m.value - taylor) < 1e-9
    assert m.details["loss"] == pytest.approx(float(F.cross_entropy(model(x), y).detach()), rel=1e-12)


def test_params_restricts_the_perturbation():
    model = tiny_mlp()
    x, y = tiny_batch(12)
    rho = 1e-3
    m = sharpness(model, (x, y), rho=rho, adaptive=False, params="2.weight", quiet=True)
    g = torch.autograd.grad(F.cross_entropy(model(x), y), model[2].weight)[0]
    assert m.value == pytest.approx(rho * float(g.norm()), rel=1e-2)
    assert m.details["params"] == ["2.weight"]


def test_model_left_unchanged():
    model = tiny_mlp()
    x, y = tiny_batch()
    model.train()
    model[0].bias.requires_grad_(False)
    F.cross_entropy(model(x), y).backward()
    calls = []
    model[2].register_forward_hook(lambda *a: calls.append(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    hooks = dict(model[2]._forward_hooks)
    for kind in ("worst", "average"):
        sharpness(model, (x, y), rho=0.5, kind=kind, steps=3, samples=3, quiet=True)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert dict(model[2]._forward_hooks) == hooks
    assert calls  # the user's hook still fires during the measure


def test_deterministic_given_seed_and_registered():
    model, (x, y) = tiny_mlp(), tiny_batch()
    a = sharpness(model, (x, y), rho=0.05, kind="average", samples=5, seed=3, quiet=True)
    b = fp.measure("sharpness", model, (x, y), rho=0.05, kind="average", samples=5, seed=3, quiet=True)
    c = sharpness(model, (x, y), rho=0.05, kind="average", samples=5, seed=4, quiet=True)
    assert a.value == b.value and a.value != c.value


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": 0.0}, "rho"),
        ({"rho": 0.1, "kind": "max"}, "kind"),
        ({"rho": 0.1, "norm": "l1"}, "norm"),
        ({"rho": 0.1, "steps": 0}, "steps"),
        ({"rho": 0.1, "samples": 0}, "samples"),
        ({"rho": 0.1, "step_size": -1.0}, "step_size"),
        ({"rho": 0.1, "params": "nope"}, "params"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sharpness(tiny_mlp(), tiny_batch(), quiet=True, **kwargs)


def test_rho_is_required():
    with pytest.raises(TypeError):
        sharpness(tiny_mlp(), tiny_batch())  # type: ignore[call-arg]


# -- m-sharpness (Andriushchenko et al. 2023) ----------------------------------------------------


def test_m_sharpness_is_the_mean_of_per_batch_worst_cases():
    """With m = 4 on 12 samples given as batches of 5 and 7, the worst case is taken per consecutive
    group of 4 samples (0-3, 4-7, 8-11, across the caller's batch boundary) and averaged. Each group's
    worst case is rho |g_c| + rho^2/2 u_c^T H_c u_c + O(rho^3) (g_c, H_c: that group's gradient and
    Hessian). Guards against one worst case for all data (the mean of |g_c| exceeds |mean g_c|),
    against groups that follow the caller's batches, and against an unweighted mix-up of groups."""
    model = tiny_mlp()
    x, y = tiny_batch(12)
    rho = 1e-3
    m = sharpness(model, [(x[:5], y[:5]), (x[5:], y[5:])], rho=rho, adaptive=False, steps=10, m=4, quiet=True)
    params = list(model.parameters())
    expected = []
    for lo in (0, 4, 8):
        xc, yc = x[lo:lo + 4], y[lo:lo + 4]
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(F.cross_entropy(model(xc), yc), params)])
        u = g / g.norm()
        expected.append(rho * float(g.norm()) + 0.5 * rho**2 * float(u @ dense_hessian(model, xc, yc) @ u))
    assert m.details["batch_sizes"] == [4, 4, 4]
    assert m.details["batch_sharpness"] == pytest.approx(expected, abs=1e-9)
    assert m.value == pytest.approx(sum(expected) / 3, abs=1e-9)
    whole = sharpness(model, (x, y), rho=rho, adaptive=False, steps=10, quiet=True).value
    assert m.value > 1.3 * whole  # per-batch worst cases are sharper than the full-data one (1.47x here)


def test_m_sharpness_weights_a_short_last_batch_by_its_size():
    model = tiny_mlp()
    x, y = tiny_batch(10)
    rho = 1e-3
    m = sharpness(model, (x, y), rho=rho, adaptive=False, steps=5, m=4, quiet=True)
    assert m.details["batch_sizes"] == [4, 4, 2]
    b = m.details["batch_sharpness"]
    assert m.value == pytest.approx((4 * b[0] + 4 * b[1] + 2 * b[2]) / 10, rel=1e-12)
    # m at least the number of samples: the full-data worst case, bit for bit
    full = sharpness(model, (x, y), rho=rho, adaptive=False, steps=5, quiet=True)
    assert sharpness(model, (x, y), rho=rho, adaptive=False, steps=5, m=10, quiet=True).value == full.value


def test_m_only_for_the_worst_case():
    with pytest.raises(ValueError, match="kind='worst'"):
        sharpness(tiny_mlp(), tiny_batch(), rho=0.1, kind="average", m=4, quiet=True)
    with pytest.raises(ValueError, match="m"):
        sharpness(tiny_mlp(), tiny_batch(), rho=0.1, m=0, quiet=True)


def test_linf_sign_ascent_is_a_lower_bound_stopping_at_a_local_vertex():
    """For L = 0.5 e^T A e with A = [[1, -0.3], [-0.3, 1]] the box's vertices give 0.7 rho^2 ((+-1, +-1)
    along the diagonal) and 1.3 rho^2 (the anti-diagonal); every vertex is a fixed point of sign ascent
    (sign(A v) = sign(v)), so the ascent returns the vertex its start leads to: a lower bound, which for
    some starts is the local 0.7 rho^2, never more than the maximum 1.3 rho^2."""
    A = torch.tensor([[1.0, -0.3], [-0.3, 1.0]], dtype=torch.float64)
    w0 = torch.tensor([0.4, -0.2], dtype=torch.float64)
    rho = 0.1
    x, y = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.long)
    values = [sharpness(Quadratic(w0), (x, y), rho=rho, kind="worst", adaptive=False, norm="linf",
                        loss_fn=quadratic_loss(A, w0), seed=seed, quiet=True).value for seed in range(12)]
    for v in values:  # exactly one of the two vertex values
        assert min(abs(v - 0.7 * rho**2), abs(v - 1.3 * rho**2)) < 1e-12, v
    assert any(abs(v - 0.7 * rho**2) < 1e-12 for v in values)  # stuck at a local vertex for some starts
    assert any(abs(v - 1.3 * rho**2) < 1e-12 for v in values)


# -- robust (adversarial) sharpness (Stutz et al. 2021) on logistic regression, exact ------------


def robust_logistic_loss(x, y, w, b, eps):
    """The worst L2 perturbation of norm eps of a linear score lowers every margin s (w.x + b) by exactly
    eps ||w|| (Cauchy-Schwarz, attained at d = -eps s w / ||w||), so the robust logistic loss is
    mean softplus(-(s (w.x + b) - eps ||w||)) with s = 2y - 1."""
    s = 2.0 * y.to(x.dtype) - 1.0
    return F.softplus(-(s * (x.flatten(1) @ w + b) - eps * w.norm())).mean(-1)


def mnist_two_features(n=300):
    """Real MNIST 3s and 7s reduced to two inputs in [0, 1]: the mean ink of the top and bottom halves."""
    from conftest import shared_path
    from flatplug.sources import load_mnist

    data = load_mnist(shared_path("data", "mnist"), n=3 * n)
    keep = (data.y == 3) | (data.y == 7)
    img = data.x[keep][:n].double()
    x = torch.stack([img[:, 0, :14].mean((1, 2)), img[:, 0, 14:].mean((1, 2))], 1)
    return x, (data.y[keep][:n] == 7).long()


def test_adversarial_worst_sharpness_equals_brute_force_on_the_closed_form():
    """Robust sharpness of logistic regression on real MNIST features (L2 ball of inputs, no clipping),
    in the 3 weights (w1, w2, b): the closed-form robust loss is convex in the weights, so its maximum
    over the rho-ball lies on the sphere, found here by brute force over 40,000 sphere points. PGD re-run
    at every ascent step reproduces it. Guards against the attack being dropped at the perturbed weights
    (the clean loss's maximum is far from it) and against a wrong unperturbed robust loss."""
    x, y = mnist_two_features()
    w, b, eps = torch.tensor([5.0, -20.0], dtype=torch.float64), 2.0, 0.05  # ~ the logistic fit (75% acc.)
    rho = 0.3 * float(torch.cat([w, torch.tensor([b], dtype=torch.float64)]).norm())
    model = LinearLogit(w, b)
    adv = {"eps": eps, "norm": "l2", "clip": None, "random_start": False, "steps": 5, "step_size": eps}
    m = sharpness(model, (x, y), rho=rho, kind="worst", adaptive=False, steps=40, adversarial=adv, quiet=True)
    base = robust_logistic_loss(x, y, w, b, eps)
    assert m.details["loss"] == pytest.approx(float(base), rel=1e-12)
    # brute force: a Fibonacci lattice on the sphere of radius rho in (w1, w2, b)
    k = torch.arange(40000, dtype=torch.float64) + 0.5
    polar, azimuth = torch.acos(1 - 2 * k / 40000), math.pi * (1 + 5**0.5) * k
    d = rho * torch.stack([polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()], 1)
    ws, bs = w + d[:, :2], b + d[:, 2:]  # [points, 2], [points, 1]
    s = 2.0 * y.double() - 1.0
    robust = F.softplus(-(s * (ws @ x.T + bs) - eps * ws.norm(dim=1, keepdim=True))).mean(1)
    brute = float(robust.max() - base)
    assert m.value == pytest.approx(brute, rel=1e-3)
    clean = float(F.softplus(-(s * (ws @ x.T + bs))).mean(1).max() - F.softplus(-(s * (x @ w + b))).mean())
    assert abs(clean - brute) > 0.01 * brute, (clean, brute)  # 1.7%: 17x the tolerance above

