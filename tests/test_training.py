"""fp.train: every method end to end on real digits, exactness checks and finite-difference gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import flatplug as fp
from flatplug.sources.digits import load_digits
from flatplug.sources.subset import to_loader
from flatplug.training import METHODS, fam_objective, lfr_regularizer

FAST = {
    "standard": {},
    "pgd-at": {"eps": 0.1, "steps": 2},
    "lfr": {"eps": 0.1, "steps": 2, "lam": 0.5},
    "sam": {"rho": 0.05},
    "asam": {"rho": 0.5},
    "awp": {"eps": 0.1, "steps": 2, "gamma": 0.01},
    "fam": {"lam": 0.01},
}


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 16, 16), nn.ReLU(), nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(n=256, split="train")
    return to_loader(x, y, 64)


def test_every_builtin_method_is_registered():
    assert set(METHODS) <= set(fp.list_plugins("trainers"))
    assert set(FAST) == set(METHODS)


@pytest.mark.parametrize("method", sorted(FAST))
def test_method_runs_and_leaves_no_weight_perturbation(method, digits):
    """With lr = 0 any perturbation left behind by a method would show in the weights."""
    model = cnn()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    history = fp.train(model, digits, method=method, epochs=1, optimizer=opt, quiet=True, **FAST[method])
    assert len(history) == 1 and set(history[0]) >= {"loss", "accuracy", "seconds", "lr"}
    assert torch.isfinite(torch.tensor(history[0]["loss"]))
    for p0, p1 in zip(before, model.parameters()):
        assert torch.equal(p0, p1), method
    assert not model.training


@pytest.mark.parametrize("method", sorted(FAST))
def test_step_keeps_the_mode_of_every_layer(method, digits):
    """A BatchNorm layer the user froze (eval mode) inside a model in train mode is still frozen after a
    step, and every other layer still in train mode: the inner maximisations switch to eval mode and
    back per layer (``model.train()`` afterwards unfroze the BatchNorm)."""
    model = cnn(2).train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    x, y = next(iter(digits))
    METHODS[method](**FAST[method]).step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.01))
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("method", sorted(FAST))
def test_method_lowers_the_training_loss(method, digits):
    model = cnn(1)
    history = fp.train(model, digits, method=method, epochs=3, quiet=True,
                       optimizer=torch.optim.Adam(model.parameters(), lr=3e-3), **FAST[method])
    losses = history.column("loss")
    assert losses[-1] < losses[0], (method, losses)


def test_sam_with_rho_zero_is_the_base_optimizer_step(digits):
    a, b = cnn(2), cnn(2)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    fp.train(a, digits[:2], method="standard", epochs=2, optimizer=opt_a, quiet=True)
    fp.train(b, digits[:2], method="sam", rho=0.0, epochs=2, optimizer=opt_b, quiet=True)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def tiny_tanh(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def finite_difference(fn, params, h=1e-6):
    grads = []
    for p in params:
        g = torch.zeros_like(p)
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + h
            up = float(fn())
            flat[i] = old - h
            down = float(fn())
            flat[i] = old
            g.view(-1)[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("q", [1, 2])
def test_lfr_regularizer_gradient_matches_finite_differences(q):
    model = tiny_tanh()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 2, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    params = list(model.parameters())
    auto = torch.autograd.grad(lfr_regularizer(model, x, y, q=q), params)
    numeric = finite_difference(lambda: lfr_regularizer(model, x, y, q=q), params)
    for a, n in zip(auto, numeric):
        assert torch.allclose(a, n, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("variant", ["pairwise", "trace"])
def test_fam_regularizer_gradient_matches_finite_differences(variant):
    model = tiny_tanh(3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(5, 1, 2, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    params = list(model.parameters())
    reg = lambda: fam_objective(model, x, y, variant=variant)[1]
    auto = torch.autograd.grad(reg(), params)
    numeric = finite_difference(reg, params)
    for a, n in zip(auto, numeric):
        assert torch.allclose(a, n, rtol=1e-5, atol=1e-8)


def test_fam_regularizer_is_the_relative_flatness_measure():
    model = tiny_tanh(4)
    x, y = torch.rand(7, 1, 2, 3, dtype=torch.float64), torch.randint(0, 3, (7,))
    _, reg, _ = fam_objective(model, x, y)
    assert float(reg) == pytest.approx(fp.measures.relative_flatness(model, (x, y), exact=True).value, rel=1e-6)


def test_torch2_scheduler_is_accepted(digits):
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history = fp.train(model, digits[:1], method="standard", epochs=3, optimizer=opt, scheduler=sched, quiet=True)
    assert history.column("lr") == pytest.approx([0.1, 0.05, 0.025])


def test_bad_arguments(digits):
    model = cnn()
    with pytest.raises(ValueError, match="lam"):
        fp.train(model, digits, method="lfr", epochs=1, lam=-1.0)
    with pytest.raises(ValueError, match="rho"):
        fp.train(model, digits, method="sam", epochs=1, rho=-0.1)
    with pytest.raises(ValueError, match="eps"):
        fp.train(model, digits, method="pgd-at", epochs=1, eps=-0.1)
    with pytest.raises(LookupError, match="Did you mean 'sam'"):
        fp.train(model, digits, method="sma", epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        fp.train(model, digits, method="standard", epochs=0)
    with pytest.raises(TypeError, match="'sam'.*unexpected"):
        fp.train(model, digits, method="sam", epochs=1, eps=0.1)
    scaled = [(x * 255, y) for x, y in digits]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fp.train(model, scaled, method="pgd-at", epochs=1)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        fp.train(model, [(digits[0][0], digits[0][1] + 10)], method="standard", epochs=1)
