"""AWP's TRADES mode, beta and warm-up in the core, against hand-computed steps (Wu et al. 2020; Zhang et al. 2019).

The oracle recomputes one AWP step with ``torch.func.functional_call`` on copies of the weights:
the TRADES objective ``CE(f(x)) + beta * KL(p(x) || p(x_adv))`` (batch means), its weight gradient,
the layer-wise perturbation ``gamma ||w|| g / ||g||`` of the matrices only, the gradient at the
perturbed weights, and the SGD step from the unperturbed weights. A wrong KL direction, a missing
beta, perturbing biases, or not removing the perturbation each fail it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import flatplug as fp
from conftest import tiny_batch, tiny_mlp
from flatplug.training import AWP
from flatplug.training.trades import trades_examples


def fixed_attack(x, y):
    return (x + 0.05 * torch.sign(torch.sin(7 * x))).clamp(0, 1)


def trades_objective(model, params, x, x_adv, y, beta):
    logits = functional_call(model, params, (x,))
    logits_adv = functional_call(model, params, (x_adv,))
    kl = (F.softmax(logits, 1) * (F.log_softmax(logits, 1) - F.log_softmax(logits_adv, 1))).sum(1)
    return F.cross_entropy(logits, y) + beta * kl.mean()


@pytest.mark.parametrize("mode", ["trades", "pgd"])
def test_awp_step_is_the_hand_computed_step(mode):
    model = tiny_mlp(seed=3)
    x, y = tiny_batch(n=24)
    x_adv = fixed_attack(x, y)
    gamma, beta, lr = 0.05, 4.0, 0.3
    names = [n for n, _ in model.named_parameters()]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

    def objective(params):
        if mode == "trades":
            return trades_objective(model, params, x, x_adv, y, beta)
        return F.cross_entropy(functional_call(model, params, (x_adv,)), y)

    ascent = {n: v.clone().requires_grad_(True) for n, v in w0.items()}
    g = dict(zip(names, torch.autograd.grad(objective(ascent), list(ascent.values()))))
    moved = {n: w0[n] + (gamma * w0[n].norm() * g[n] / g[n].norm() if w0[n].dim() > 1 else 0) for n in names}
    moved = {n: v.requires_grad_(True) for n, v in moved.items()}
    g2 = dict(zip(names, torch.autograd.grad(objective(moved), list(moved.values()))))
    expected = {n: w0[n] - lr * g2[n] for n in names}

    method = AWP(gamma=gamma, mode=mode, beta=beta, attack=fixed_attack)
    method.step(model, x, y, torch.optim.SGD(model.parameters(), lr=lr))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-10, atol=1e-12)


def test_warmup_epochs_train_without_weight_perturbation():
    """With warmup=1, epoch 1 is plain TRADES (== gamma 0); epoch 2 perturbs (!= gamma 0)."""
    x, y = tiny_batch(n=32)
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    runs = {}
    for name, params in {"warm": dict(gamma=0.05, warmup=1), "plain": dict(gamma=0.0)}.items():
        model = tiny_mlp(seed=1)
        snapshots = []
        fp.train(model, data, method="awp", mode="trades", beta=6.0, attack=fixed_attack, epochs=2, quiet=True,
                 optimizer=torch.optim.SGD(model.parameters(), lr=0.2),
                 on_epoch=lambda r, m=model, s=snapshots: s.append([p.detach().clone() for p in m.parameters()]),
                 **params)
        runs[name] = snapshots
    assert all(torch.equal(a, b) for a, b in zip(runs["warm"][0], runs["plain"][0]))
    assert not all(torch.equal(a, b) for a, b in zip(runs["warm"][1], runs["plain"][1]))


def test_trades_examples_follow_the_official_recursion():
    """Start x + 0.001 N(0, I) (global RNG), sign steps on the summed KL, box projection, [0, 1] clip; eval mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).double()
    x, _ = tiny_batch(n=16)
    model.train()
    eps, steps, alpha = 0.1, 4, 0.03
    torch.manual_seed(5)
    got = trades_examples(model, x, eps=eps, norm="linf", steps=steps, step_size=alpha)
    assert model.training  # mode restored
    torch.manual_seed(5)
    model.eval()
    with torch.no_grad():
        p = F.softmax(model(x), 1)
    xa = (x + (0.001 * torch.randn(x.shape, dtype=x.dtype)).clamp(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(xa), 1), p, reduction="sum")
        (grad,) = torch.autograd.grad(kl, xa)
        xa = torch.min(torch.max(xa.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(got, xa, rtol=0, atol=1e-12)
    with torch.no_grad():
        kl_start = F.kl_div(F.log_softmax(model(x), 1), p, reduction="sum")
        kl_end = F.kl_div(F.log_softmax(model(got), 1), p, reduction="sum")
    assert float(kl_end) > float(kl_start) + 1e-6


def test_fp_train_reaches_trades_awp_by_name_and_checks_its_arguments():
    x, y = tiny_batch(n=32)
    model = tiny_mlp(seed=2)
    history = fp.train(model, [(x, y)], method="awp", mode="TRADES", beta=3.0, warmup=0, eps=0.05, steps=2,
                       epochs=2, quiet=True, seed=0)
    assert history.settings["mode"] == "trades" and history.settings["beta"] == 3.0
    assert "_epoch" not in history.settings
    with pytest.raises(ValueError, match="mode: expected one of"):
        AWP(mode="mart")
    with pytest.raises(ValueError, match="warmup: expected a non-negative whole number"):
        AWP(warmup=-1)
    with pytest.raises(ValueError, match="beta: expected a non-negative"):
        AWP(beta=-1.0)
