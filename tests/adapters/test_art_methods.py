"""PGD-AT combined with SAM / ASAM / FAM (plain torch methods of the adapter), against hand-computed steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("flatplug_art")

from conftest import tiny_batch, tiny_mlp  # noqa: E402

import flatplug as fp  # noqa: E402
from flatplug.attacks import pgd  # noqa: E402
from flatplug.measures.relative_flatness import closed_form  # noqa: E402
from flatplug_art.methods import PGDATASAM, PGDATFAM, PGDATSAM  # noqa: E402


def fixed_attack(model):
    """A deterministic inner maximiser (PGD with a seeded start), so the oracle sees the same examples."""
    return lambda x, y: pgd(model, x, y, eps=0.1, steps=3, seed=0)


def setup(seed=0):
    model = tiny_mlp(seed=seed)
    x, y = tiny_batch()
    return model, x, y, torch.optim.SGD(model.parameters(), lr=0.5)


def grad_at(model, params, x, y, deltas=None):
    """Gradient of the mean CE at weights + deltas, computed on a copy (nothing of the model is touched)."""
    names = [n for n, _ in model.named_parameters()]
    override = {n: p.detach() + (0 if deltas is None else d) for n, p, d in
                zip(names, params, deltas or [None] * len(params))}
    override = {n: v.requires_grad_(True) for n, v in override.items()}
    loss = F.cross_entropy(torch.func.functional_call(model, override, (x,)), y)
    return torch.autograd.grad(loss, list(override.values()))


@pytest.mark.parametrize("adaptive", [False, True])
def test_pgd_at_sam_step_is_sam_on_the_pgd_examples(adaptive):
    model, x, y, opt = setup()
    attack = fixed_attack(model)
    x_adv = attack(x, y)  # the model is in eval mode already (tiny_mlp has no mode-dependent layers)
    params = [p.detach().clone() for p in model.parameters()]
    rho, eta = (0.5, 0.01) if adaptive else (0.05, 0.01)
    g = grad_at(model, params, x_adv, y)
    if adaptive:  # ASAM: e = rho T^2 g / ||T g||, T = |w| + eta for "weight" parameters, 1 for biases (official code)
        names = [n for n, _ in model.named_parameters()]
        assert any("bias" in n for n in names)
        t = [p.abs() + eta if "weight" in n else torch.ones_like(p) for n, p in zip(names, params)]
        norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
        e = [rho * ti * ti * gi / norm for ti, gi in zip(t, g)]
    else:
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        e = [rho * gi / norm for gi in g]
    g2 = grad_at(model, params, x_adv, y, e)
    expected = [p - 0.5 * gi for p, gi in zip(params, g2)]

    method = (PGDATASAM if adaptive else PGDATSAM)(attack=attack, rho=rho, eta=eta)
    method.step(model, x, y, opt)
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-12)


def test_pgd_at_fam_step_adds_relative_flatness_at_the_pgd_examples():
    model, x, y, opt = setup(1)
    attack = fixed_attack(model)
    x_adv = attack(x, y)
    lam = 0.3
    ref = tiny_mlp(seed=1)
    phi = ref[1](ref[0](x_adv))  # the features entering the last Linear
    objective = F.cross_entropy(ref(x_adv), y) + lam * closed_form(phi, ref[2].weight, ref[2].bias).mean()
    grads = torch.autograd.grad(objective, list(ref.parameters()))
    expected = [p.detach() - 0.5 * g for p, g in zip(ref.parameters(), grads)]
    PGDATFAM(attack=attack, lam=lam).step(model, x, y, opt)
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-12)


def test_combined_methods_run_through_fp_train_by_name():
    model = tiny_mlp(seed=2)
    x, y = tiny_batch(n=32)
    history = fp.train(model, [(x[:16], y[:16]), (x[16:], y[16:])], method="art.pgd-at+sam", epochs=2, eps=0.05,
                       steps=2, rho=0.05, quiet=True, seed=0)
    assert history.method == "art.pgd-at+sam" and len(history) == 2
    assert history.settings["rho"] == 0.05 and history.settings["eps"] == 0.05


def test_combined_methods_check_their_parameters():
    with pytest.raises(ValueError, match="rho: expected a non-negative"):
        PGDATSAM(rho=-1.0)
    with pytest.raises(ValueError, match="eps: expected a non-negative"):
        PGDATFAM(eps=-0.1)
    with pytest.raises(TypeError, match="art.pgd-at\\+fam: .*unexpected keyword argument 'rho'"):
        PGDATFAM(rho=0.1)
    with pytest.raises(ValueError, match="images in \\[0, 1\\]"):
        fp.train(tiny_mlp(), [(tiny_batch()[0] * 5, tiny_batch()[1])], method="art.pgd-at+asam", epochs=1, quiet=True)
