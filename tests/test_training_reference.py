"""One step of every training method against a reference computed by hand with torch.autograd.

For each method the test builds what one SGD step must do on a tiny float64 network (no batch norm, no dropout:
train and eval mode agree): the attack or inner maximiser, the ascent direction, the gradient at the explicitly
perturbed weights (``torch.func.functional_call`` on perturbed copies), and the updated weights ``w - lr * g``
(the perturbation is gone: the step starts from the restored ``w``). ``fp.train`` then runs one epoch of one batch
with ``torch.optim.SGD(lr)``, every hyper-parameter passed explicitly, and must land on the same weights to rounding.

Each reference is written from the method's paper, independently of flatplug's code:

* standard: ``g = grad L(w)``;
* SAM (Foret et al. 2021): ``e = rho g / ||g||`` (one norm over all parameters), ``g' = grad L(w + e)``;
* ASAM (Kwon et al. 2021): ``e = rho T^2 g / ||T g||`` with ``T = |w| + eta`` elementwise for the parameters whose
  name contains "weight" and ``T = 1`` for the others (biases), as the official code (SamsungLabs/ASAM, asam.py);
* PGD-AT (Madry et al. 2018): ``g = grad L(w; x_adv)``, ``x_adv`` by projected sign (L-inf) or normalised (L2) steps;
* AWP (Wu et al. 2020): for each weight tensor of dim > 1, ``v_l = gamma ||w_l|| g_l / ||g_l||`` with ``g_l`` the
  gradient of the adversarial loss (ascent), then ``g' = grad L(w + v; x_adv)`` for all parameters;
* LFR (Xu et al. 2020): ``x'`` maximises ``||grad_x l(x', y)||_q`` over the eps-ball (random start within 0.1 eps,
  projected ascent, the best point seen, x included), objective ``L(x) + lam mean_i ||grad_x l(x'_i)||_q``
  differentiated through the input gradient (plus ``L(x_adv)`` with ``adversarial=True``);
* FAM (Adilova et al. 2023): ``L + lam kappa`` with ``kappa = sum_{s,s'} <w_s, w_s'> tr(H_{s,s'})`` (pairwise) or
  ``||W||_F^2 tr(H)`` (trace) from the autograd Hessian of the loss w.r.t. the last layer's weight matrix ``W``.

The random starts come from torch's global generator, which ``fp.train(seed=...)`` seeds: the references draw the
same numbers in the same order (uniform for L-inf, normal then uniform radii for L2).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import flatplug as fp

LR = 0.1
SEED = 123


def tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_data(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def loss_at(model, w: dict, x, y) -> torch.Tensor:
    return F.cross_entropy(functional_call(model, w, (x,)), y)


def grad_at(model, w: dict, x, y) -> dict[str, torch.Tensor]:
    live = {n: t.detach().clone().requires_grad_(True) for n, t in w.items()}
    grads = torch.autograd.grad(loss_at(model, live, x, y), list(live.values()))
    return dict(zip(live, grads))


def sgd(w: dict, g: dict) -> dict:
    return {n: w[n] - LR * g[n] for n in w}


def run_train(method: str, model, x, y, **params):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    return fp.train(model, [(x, y)], method=method, epochs=1, optimizer=opt, quiet=True, seed=SEED, **params)


def assert_weights(model, expected: dict):
    got = weights_of(model)
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-10, atol=1e-12, msg=lambda m: f"{n}: {m}")


def assert_moved_away_from(expected: dict, other: dict, at_least: float = 1e-6):
    """The reference differs from a plausible wrong answer by far more than the tolerance (the test can fail)."""
    gap = max(float((expected[n] - other[n]).abs().max()) for n in expected)
    assert gap > at_least, gap


# -- attacks written out by hand ----------------------------------------------------------------------------------


def flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x, xp, eps, norm):
    delta = xp - x
    delta = delta.clamp(-eps, eps) if norm == "linf" else delta * (eps / flat_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0, 1)


def step_towards(direction, size, norm):
    return size * (direction.sign() if norm == "linf" else direction / flat_norm(direction))


def random_point(x, radius, norm):
    """The next draw of torch's global generator: uniform in the L-inf ball, or a normal direction times a
    uniform radius in the L2 ball."""
    if norm == "linf":
        return x + (2 * torch.rand(x.shape, dtype=x.dtype) - 1) * radius
    d = torch.randn(x.shape, dtype=x.dtype)
    r = torch.rand(x.shape[0], dtype=x.dtype)
    return x + d / flat_norm(d) * (radius * r).view(-1, *([1] * (x.dim() - 1)))


def pgd_by_hand(model, w, x, y, *, eps, norm, steps, step_size, random_start):
    """Madry et al.'s PGD on the summed cross-entropy: ascent steps, projection onto the ball and [0, 1]."""
    xp = project(x, random_point(x, eps, norm), eps, norm) if random_start else x.clone()
    for _ in range(steps):
        xp = xp.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(functional_call(model, w, (xp,)), y, reduction="sum"), xp)
        xp = project(x, xp.detach() + step_towards(g, step_size, norm), eps, norm)
    return xp.detach()


def input_grad_norms(model, w, xp, y, q, create_graph):
    xp = xp if xp.requires_grad else xp.detach().requires_grad_(True)
    losses = F.cross_entropy(functional_call(model, w, (xp,)), y, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), xp, create_graph=create_graph)
    return torch.linalg.vector_norm(g.flatten(1), ord=q, dim=1)


def lfr_point_by_hand(model, w, x, y, *, eps, norm, q, steps, step_size):
    """The last iterate of projected ascent on ||grad_x l||_q from a random start within 0.1 eps: the official
    LFR code's inner maximisation (Uooga/Local-Flatness-Regularization, ``LFR_loss.py``), which keeps no best point."""
    xp = project(x, random_point(x, 0.1 * eps, norm), eps, norm)
    for _ in range(steps):
        xr = xp.detach().requires_grad_(True)
        norms = input_grad_norms(model, w, xr, y, q, create_graph=True)
        (direction,) = torch.autograd.grad(norms.sum(), xr)
        xp = project(x, xr.detach() + step_towards(direction, step_size, norm), eps, norm)
    return xp.detach()


# -- the tests ----------------------------------------------------------------------------------------------------


def test_standard_step():
    """Guards against a loop that does not step with the gradient of the mean cross-entropy on the clean batch."""
    model, (x, y) = tiny_net(), tiny_data()
    w = weights_of(model)
    expected = sgd(w, grad_at(model, w, x, y))
    history = run_train("standard", model, x, y)
    assert_weights(model, expected)
    assert history[0]["loss"] == pytest.approx(float(loss_at(model, w, x, y)), rel=1e-12)


def sam_perturbation(w, g, rho, eta, adaptive, scale_biases=False):
    """SAM's or ASAM's ascent; ``scale_biases=True`` is the wrong ASAM that applies T to the biases too."""
    if adaptive:
        t = {n: w[n].abs() + eta if "weight" in n or scale_biases else torch.ones_like(w[n]) for n in w}
        norm = torch.sqrt(sum(((t[n] * g[n]) ** 2).sum() for n in w))
        return {n: rho * t[n] ** 2 * g[n] / norm for n in w}
    norm = torch.sqrt(sum((g[n] ** 2).sum() for n in w))
    return {n: rho * g[n] / norm for n in w}


@pytest.mark.parametrize("method, rho", [("sam", 0.1), ("asam", 0.5)])
def test_sam_and_asam_step(method, rho):
    """The ascent e (SAM: rho g/||g||; ASAM: rho T^2 g/||T g||, T = |w| + eta), the gradient at w + e, and the
    step from the restored w. Guards against a SAM/ASAM that never perturbs (the plain gradient step, checked to be
    far from the reference), that perturbs downhill, that normalises per tensor or forgets T, or that leaves the
    perturbation in the weights; for ASAM, against T applied to the biases too (the official code scales only
    parameters named "weight"; that step is checked to be far from the reference)."""
    eta = 0.01
    model, (x, y) = tiny_net(2), tiny_data(seed=3)
    w = weights_of(model)
    g = grad_at(model, w, x, y)
    e = sam_perturbation(w, g, rho, eta, adaptive=method == "asam")
    w_e = {n: w[n] + e[n] for n in w}
    assert float(loss_at(model, w_e, x, y)) > float(loss_at(model, w, x, y))  # e is an ascent direction
    expected = sgd(w, grad_at(model, w_e, x, y))
    assert_moved_away_from(expected, sgd(w, g))
    if method == "asam":
        assert any("bias" in n for n in w)
        e_biases_scaled = sam_perturbation(w, g, rho, eta, adaptive=True, scale_biases=True)
        assert_moved_away_from(expected, sgd(w, grad_at(model, {n: w[n] + e_biases_scaled[n] for n in w}, x, y)))
    history = run_train(method, model, x, y, rho=rho, eta=eta)
    assert_weights(model, expected)
    assert history[0]["loss"] == pytest.approx(float(loss_at(model, w, x, y)), rel=1e-12)


PGD = {"eps": 0.1, "steps": 3, "step_size": 0.04}  # 3 steps of 0.04 overshoot eps: the projection is active


@pytest.mark.parametrize("norm, random_start", [("linf", False), ("linf", True), ("l2", False)])
def test_pgd_at_step(norm, random_start):
    """Cross-entropy at PGD examples made at the current weights (eval mode; identical here). Guards against
    examples that ascend the wrong way, skip the projection onto the ball, start from the wrong point, or a step
    taken on the clean batch."""
    eps, step_size = PGD["eps"], (0.06 if norm == "l2" else PGD["step_size"])
    model, (x, y) = tiny_net(4), tiny_data(seed=5)
    w = weights_of(model)
    torch.manual_seed(SEED)
    x_adv = pgd_by_hand(model, w, x, y, eps=eps, norm=norm, steps=3, step_size=step_size, random_start=random_start)
    assert float(loss_at(model, w, x_adv, y)) > float(loss_at(model, w, x, y))
    expected = sgd(w, grad_at(model, w, x_adv, y))
    assert_moved_away_from(expected, sgd(w, grad_at(model, w, x, y)))
    history = run_train("pgd-at", model, x, y, eps=eps, steps=3, step_size=step_size, random_start=random_start,
                        norm=norm, attack=None)
    assert_weights(model, expected)
    assert history[0]["loss"] == pytest.approx(float(loss_at(model, w, x_adv, y)), rel=1e-12)


@pytest.mark.parametrize("gamma", [0.02, 0.2])
def test_awp_step(gamma):
    """PGD examples at w; for each weight matrix the ascent v_l = gamma ||w_l|| g_l / ||g_l|| of the adversarial loss
    (biases untouched); the gradient of the adversarial loss at w + v; the step from the restored w. Guards against
    an AWP that perturbs downhill or not at all (both checked to be far from the reference), that normalises
    globally instead of layer-wise, that perturbs biases, or that takes the ascent on clean inputs."""
    model, (x, y) = tiny_net(6), tiny_data(seed=7)
    w = weights_of(model)
    x_adv = pgd_by_hand(model, w, x, y, eps=PGD["eps"], norm="linf", steps=3, step_size=PGD["step_size"],
                        random_start=False)
    g = grad_at(model, w, x_adv, y)
    v = {n: (gamma * w[n].norm() * g[n] / g[n].norm() if w[n].dim() > 1 else torch.zeros_like(w[n])) for n in w}
    w_v = {n: w[n] + v[n] for n in w}
    w_down = {n: w[n] - v[n] for n in w}
    assert float(loss_at(model, w_v, x_adv, y)) > float(loss_at(model, w, x_adv, y))
    expected = sgd(w, grad_at(model, w_v, x_adv, y))
    assert_moved_away_from(expected, sgd(w, grad_at(model, w_down, x_adv, y)))
    assert_moved_away_from(expected, sgd(w, g))
    history = run_train("awp", model, x, y, gamma=gamma, eps=PGD["eps"], steps=3, step_size=PGD["step_size"],
                        random_start=False, norm="linf", attack=None)
    assert_weights(model, expected)
    assert history[0]["loss"] == pytest.approx(float(loss_at(model, w_v, x_adv, y)), rel=1e-12)


@pytest.mark.parametrize("norm, q, adversarial", [("linf", 1, False), ("l2", 2, False), ("linf", 1, True)])
def test_lfr_step(norm, q, adversarial):
    """LFR's inner maximiser (hand-written projected ascent on ||grad_x l||_q from a random start within 0.1 eps,
    last iterate)
    and its regulariser lam * mean_i ||grad_x l(x'_i)||_q, differentiated through the input gradient. Guards
    against an inner search that steps downhill or stands still, a regulariser taken at x instead of x', a
    regulariser detached from the weights (no double backprop: checked far from the reference), the wrong q, and
    a missing PGD term with ``adversarial=True``."""
    eps, lam, steps, step_size, pgd_steps = 0.1, 0.5, 3, 0.05, 2  # 3 steps of 0.05 reach the sphere
    model, (x, y) = tiny_net(8), tiny_data(seed=9)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # curved enough that the maximiser moves
    w = weights_of(model)
    torch.manual_seed(SEED)
    x_lf = lfr_point_by_hand(model, w, x, y, eps=eps, norm=norm, q=float(q), steps=steps, step_size=step_size)
    x_adv = (pgd_by_hand(model, w, x, y, eps=eps, norm=norm, steps=pgd_steps, step_size=2.5 * eps / pgd_steps,
                         random_start=True) if adversarial else None)
    at_x = input_grad_norms(model, w, x, y, float(q), create_graph=False)
    at_lf = input_grad_norms(model, w, x_lf, y, float(q), create_graph=False)
    assert bool((at_lf > at_x * 1.01).all())  # the maximiser climbed for every sample

    def objective(wt):
        reg = input_grad_norms(model, wt, x_lf, y, float(q), create_graph=True).mean()
        total = loss_at(model, wt, x, y) + lam * reg
        return total + loss_at(model, wt, x_adv, y) if adversarial else total

    live = {n: t.clone().requires_grad_(True) for n, t in w.items()}
    value = objective(live)
    expected = sgd(w, dict(zip(live, torch.autograd.grad(value, list(live.values())))))
    detached = sgd(w, grad_at(model, w, x, y))
    if adversarial:
        detached = sgd(w, {n: a + b for (n, a), b in zip(grad_at(model, w, x, y).items(),
                                                          grad_at(model, w, x_adv, y).values())})
    assert_moved_away_from(expected, detached)
    history = run_train("lfr", model, x, y, eps=eps, lam=lam, q=q, norm=norm, steps=steps, step_size=step_size,
                        adversarial=adversarial, pgd_steps=pgd_steps, attack=None)
    assert_weights(model, expected)
    assert history[0]["loss"] == pytest.approx(float(value.detach()), rel=1e-12)


def kappa_by_hessian(model, wt, x, y, variant):
    """Relative flatness of the last layer's weight matrix from its autograd Hessian, differentiable in all weights."""
    wmat = wt["2.weight"]
    k, d = wmat.shape
    (g,) = torch.autograd.grad(loss_at(model, wt, x, y), wmat, create_graph=True)
    rows = [torch.autograd.grad(gi, wmat, create_graph=True)[0].reshape(-1) for gi in g.reshape(-1)]
    h = torch.stack(rows).reshape(k, d, k, d)
    block_traces = torch.einsum("sjtj->st", h)  # tr(H_{s,s'})
    if variant == "pairwise":
        return (wmat @ wmat.T * block_traces).sum()
    return wmat.pow(2).sum() * block_traces.trace()


@pytest.mark.parametrize("variant", ["pairwise", "trace"])
def test_fam_step(variant):
    """Cross-entropy plus lam times the relative flatness of the last layer, with kappa built from the autograd
    Hessian (not the closed form) and differentiated through the features and the Hessian. Guards against a
    regulariser that is dropped, detached from the weights (checked far from the reference), of the other variant,
    or computed on the wrong layer."""
    lam = 0.1
    model, (x, y) = tiny_net(10), tiny_data(seed=11)
    w = weights_of(model)
    live = {n: t.clone().requires_grad_(True) for n, t in w.items()}
    value = loss_at(model, live, x, y) + lam * kappa_by_hessian(model, live, x, y, variant)
    expected = sgd(w, dict(zip(live, torch.autograd.grad(value, list(live.values())))))
    assert_moved_away_from(expected, sgd(w, grad_at(model, w, x, y)))
    history = run_train("fam", model, x, y, lam=lam, layer="2", variant=variant)
    assert_weights(model, expected)
    assert history[0]["loss"] == pytest.approx(float(value.detach()), rel=1e-10)
