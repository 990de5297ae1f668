"""LFR (Xu et al. 2020) on a batch-norm network: every term is the one computed for its sample alone.

The references here are written from scratch with plain autograd, one sample at a time: the
official code's sign ascent on ||grad_x CE||_1 (github.com/Uooga/Local-Flatness-Regularization,
loss_function/LFR_loss.py, without its Gaussian start) and the paper's objective
CE(x) + lam * mean_i ||grad_x' CE_i(x'_i)||_1. Real images: scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatplug as fp
from flatplug.measures.local_flatness import ascent_point
from flatplug.sources.digits import load_digits
from flatplug.training import LFR, lfr_regularizer


def bn_cnn(seed: int = 0) -> nn.Sequential:
    """A small CNN with batch norm and non-trivial running statistics, float64, left in train mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(6 * 16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10),
    ).double()
    x, _ = load_digits(n=64, split="train")
    model.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their (0, 1) initial values
            model(x.double())
    return model


@pytest.fixture(scope="module")
def batch():
    x, y = load_digits(n=12, split="test")
    return x.double(), y


def own_gradient_norm(model, x1, y1, q=1.0, create_graph=False):
    """||grad_x CE(model(x1), y1)||_q for one sample alone, in eval mode."""
    was = model.training
    model.eval()
    x1 = x1.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x1[None]), y1[None]), x1, create_graph=create_graph)
    model.train(was)
    return torch.linalg.vector_norm(g.flatten(), ord=q)


def official_sign_ascent(model, x1, y1, eps, steps, step):
    """The official algorithm for one sample (eval mode, sign steps on ||grad||_1, project, clip), no noise."""
    model.eval()
    xa = x1.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa[None]), y1[None]), xa, create_graph=True)
        (d,) = torch.autograd.grad(g.abs().sum(), xa)
        xa = torch.min(torch.max(xa.detach() + step * d.sign(), x1 - eps), x1 + eps).clamp(0, 1)
    model.train()
    return xa


def test_regulariser_is_the_mean_of_each_samples_own_gradient_norm(batch):
    """With batch norm in train mode, one image's input gradient depends on the rest of the batch
    (the old behaviour: 17.8 in this batch against 0.73 alone for the first image). The regulariser
    and its weight gradient must be the mean of per-sample terms computed for each sample alone,
    and the running statistics stay untouched."""
    x, y = batch
    model = bn_cnn()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    reg = lfr_regularizer(model, x, y)
    grads = torch.autograd.grad(reg, params)
    alone = [own_gradient_norm(model, x[i], y[i], create_graph=True) for i in range(len(y))]
    expected = torch.stack(alone).mean()
    expected_grads = torch.autograd.grad(expected, params)
    assert float(reg.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-9, atol=1e-12)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    # the batch coupling this guards against is large on this model
    xr = x.clone().requires_grad_(True)
    (g_train,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    coupled = float(g_train[0].detach().abs().sum())
    assert abs(coupled - float(alone[0])) > 0.5 * float(alone[0])  # measured 17.8 against 0.73


def test_inner_ascent_is_the_official_sign_ascent_sample_by_sample(batch):
    """ascent_point (no random start) equals the official algorithm run on each image alone, on a
    batch-norm model: guards against train-mode (batch-coupled) ascent and against keeping the best
    point instead of the last iterate (the official code uses the last)."""
    x, y = batch
    model = bn_cnn(1)
    eps, steps = 0.1, 4
    step = 2.5 * eps / steps
    got = ascent_point(model.eval(), x, y, eps=eps, steps=steps, random_start=False)
    model.train()
    ref = torch.stack([official_sign_ascent(model, x[i], y[i], eps, steps, step) for i in range(len(y))])
    assert torch.equal(got, ref)
    assert (got - x).abs().max() <= eps + 1e-15 and not torch.equal(got, x)


@pytest.mark.parametrize("adversarial", [False, True])
def test_one_lfr_step_is_the_papers_objective(batch, adversarial):
    """One LFR step with SGD (lr 1) moves the weights by minus the gradient of
    CE_train-mode(x) + lam * mean_i ||grad_x' CE_i(x'_i)||_1, x'_i the official ascent on image i alone and
    each norm computed on image i alone (eval mode, after the train-mode pass updated the running
    statistics); the batch-norm buffers end as the train-mode passes leave them. adversarial=True
    (flatplug's extension) adds CE_train-mode(x_adv) for the attack's x_adv."""
    x, y = batch
    model = bn_cnn(2)
    ref = copy.deepcopy(model)
    eps, steps, lam = 0.1, 3, 0.7
    shift = lambda xs, ys: (xs + 0.05 * (ys.view(-1, 1, 1, 1) % 3 - 1)).clamp(0, 1)  # a fixed "attack"
    method = LFR(eps=eps, steps=steps, lam=lam, random_start=False, adversarial=adversarial,
                 attack=shift if adversarial else None)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    method.step(model, x, y, torch.optim.SGD(model.parameters(), lr=1.0))

    x_lf = torch.stack([official_sign_ascent(ref, x[i], y[i], eps, steps, 2.5 * eps / steps) for i in range(len(y))])
    ref.train()
    ce = F.cross_entropy(ref(x), y)
    if adversarial:
        ce = ce + F.cross_entropy(ref(shift(x, y)), y)
    reg = torch.stack([own_gradient_norm(ref, x_lf[i], y[i], create_graph=True) for i in range(len(y))]).mean()
    grads = torch.autograd.grad(ce + lam * reg, list(ref.parameters()))
    for p0, p1, g in zip(before, model.parameters(), grads):
        assert torch.allclose(p0 - p1, g, rtol=1e-9, atol=1e-12)
    for (k, a), b in zip(model.named_buffers(), ref.buffers()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("norm, q", [("linf", 1), ("l2", 2)])
def test_lfr_q_defaults_to_the_dual_norm(norm, q):
    method = LFR(eps=0.1, norm=norm)
    assert method.q == q and method.settings()["q"] == q
    assert LFR(eps=0.1, norm=norm, q="inf").q == "inf"
    assert LFR.version == "2" and "1910.12165" in LFR.paper


def test_lfr_regulariser_follows_the_users_loss_and_reduction(batch):
    """set_loss(loss_fn, reduction="sum"): the regulariser differentiates the user's per-sample loss
    and sums the norms (guards against a hard-wired cross-entropy or mean)."""
    x, y = batch
    model = bn_cnn(3)

    def margin(logits, y):
        return logits.logsumexp(1) - logits.gather(1, y[:, None]).squeeze(1) + 0.5 * logits.pow(2).mean(1)

    method = LFR(eps=0.1).set_loss(margin, reduction="sum")
    got = lfr_regularizer(model, x, y, method=method)
    model.eval()
    total = 0.0
    for i in range(len(y)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(model(xi), y[i:i + 1]).sum(), xi)
        total += float(g.abs().sum())
    assert float(got) == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"lam": -1.0}, "lam"), ({"q": 3}, "q: expected"), ({"steps": 0}, "steps"), ({"norm": "l1"}, "norm"),
     ({"eps": math.nan}, "eps"), ({"pgd_steps": 0}, "pgd_steps"), ({"step_size": -0.1}, "step_size"),
     ({"attack": lambda x, y: x}, "attack: only used")],
)
def test_lfr_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LFR(**{"eps": 0.1, **kwargs})
    with pytest.raises(ValueError, match=match):
        x, y = load_digits(n=8, split="train")
        fp.train(bn_cnn(), [(x, y)], method="lfr", epochs=1, quiet=True,
                 **{"eps": 0.1, **kwargs})
