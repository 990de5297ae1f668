"""The registered ``autoattack`` is the original AutoAttack (Croce & Hein 2020) as RobustBench runs it.

Oracle: the original code, installed as ``pyautoattack`` (pulled in by robustbench). Its settings
are read from its own objects after ``AutoAttack(version=...)`` (constructor plus
``_set_version``), and its ``run_standard_evaluation`` is run on the same real model and images.
torchattacks' own ``AutoAttack`` (10 iterations) must stay reachable unchanged.
"""

from __future__ import annotations

import pytest

pytest.importorskip("flatplug_torchattacks")
pyautoattack = pytest.importorskip("pyautoattack")

import torch  # noqa: E402
import torchattacks  # noqa: E402
from torchattacks_support import images, model, single_thread  # noqa: E402,F401

from flatplug import plugins  # noqa: E402
from flatplug_torchattacks import AutoAttack, attack_factories  # noqa: E402

CUSTOM = [["apgd-ce", "apgd-t"], ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"], ["square"]]
CASES = [(v, None) for v in ("standard", "plus", "rand")] + [("custom", c) for c in CUSTOM]


def _original(o, name: str) -> dict:
    """The settings the original runs attack ``name`` with (``run_standard_evaluation``'s branches)."""
    if name in ("apgd-ce", "apgd-dlr"):
        a = o.apgd
        return {"n_iter": a.n_iter, "n_restarts": a.n_restarts, "eot_iter": a.eot_iter, "rho": a.thr_decr,
                "loss": name[5:]}
    if name == "apgd-t":
        a = o.apgd_targeted
        return {"n_iter": a.n_iter, "n_restarts": a.n_restarts, "eot_iter": a.eot_iter, "rho": a.thr_decr,
                "n_target_classes": a.n_target_classes}
    if name in ("fab", "fab-t"):
        a = o.fab
        out = {"n_iter": a.n_iter, "n_restarts": a.n_restarts, "alpha_max": a.alpha_max, "eta": a.eta,
               "beta": a.beta, "targeted": name == "fab-t"}
        if name == "fab-t":  # the branch sets fab.targeted = True, fab.n_restarts = 1
            out.update(n_restarts=1, n_target_classes=a.n_target_classes)
        return out
    a = o.square
    return {"n_queries": a.n_queries, "n_restarts": a.n_restarts, "p_init": a.p_init, "loss": a.loss,
            "rescale_schedule": a.rescale_schedule}


def _ours(member, name: str) -> dict:
    """The same settings read from the torchattacks member our AutoAttack built."""
    if name in ("apgd-ce", "apgd-dlr"):
        assert type(member) is torchattacks.APGD
        return {"n_iter": member.steps, "n_restarts": member.n_restarts, "eot_iter": member.eot_iter,
                "rho": member.thr_decr, "loss": member.loss}
    if name == "apgd-t":
        assert type(member) is torchattacks.APGDT
        return {"n_iter": member.steps, "n_restarts": member.n_restarts, "eot_iter": member.eot_iter,
                "rho": member.thr_decr, "n_target_classes": member.n_target_classes}
    if name in ("fab", "fab-t"):
        assert type(member) is torchattacks.FAB
        out = {"n_iter": member.steps, "n_restarts": member.n_restarts, "alpha_max": member.alpha_max,
               "eta": member.eta, "beta": member.beta, "targeted": member.multi_targeted}
        if name == "fab-t":
            out["n_target_classes"] = member.n_target_classes
        return out
    assert type(member) is torchattacks.Square
    return {"n_queries": member.n_queries, "n_restarts": member.n_restarts, "p_init": member.p_init,
            "loss": member.loss, "rescale_schedule": member.rescale_schedule}


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("version, attacks", CASES)
def test_settings_equal_the_originals(version, attacks, norm):
    """Guards against torchattacks' defaults leaking in (10 iterations for APGD, APGD-T and FAB,
    Square's rescaled schedule), a wrong restart count (standard 1, plus and custom 5 for APGD-CE and
    FAB), target-class count (9), EOT count (rand 20) or attack order, for every version."""
    net = model()
    o = pyautoattack.AutoAttack(net, norm=norm, eps=0.5, version=version, attacks=attacks, seed=0)
    ours = AutoAttack(net, norm=norm, eps=0.5, version=version, attacks_to_run=attacks, seed=0)
    assert ours.attacks_to_run == list(o.attacks_to_run)
    for name, member in zip(ours.attacks_to_run, ours.members):
        assert _ours(member, name) == _original(o, name), name
        assert member.eps == 0.5 and member.norm == norm and member.model is net


def test_aa_lite_agrees_with_the_original_per_image():
    """AA-lite (APGD-CE then APGD-T on the survivors, 100 iterations, custom version's 5 restarts)
    against the original's ``run_standard_evaluation`` on 64 real CIFAR-10 images at Linf 2/255,
    where the attacks break some images but not all. torchattacks' APGD and APGD-T are ports of the
    original's code, both seed ``torch.manual_seed(seed)`` before each attack, and both ensembles
    attack the same survivors in one batch, so the adversarial images agree to float rounding
    (measured: 6e-8 at most). Tolerance: at most 2 of 64 images may differ by more than 1e-5 and
    robust accuracy by 1/64, since a different summation order can flip one step's accept/reject
    decision near a tie. Guards against torchattacks' 10 iterations (then 25 of these 64 images
    differ by up to 4/255), against attacking images the previous attack already broke or that were
    misclassified to begin with, and against a lost or reordered attack."""
    net = model()
    x, y = images(64)
    attack = attack_factories()["autoattack"](net, eps=2 / 255, norm="linf", version="custom",
                                              attacks_to_run=["apgd-ce", "apgd-t"])
    adv = attack(x, y)
    o = pyautoattack.AutoAttack(net, norm="Linf", eps=2 / 255, version="custom", attacks=["apgd-ce", "apgd-t"],
                                seed=0)
    o.verbose = False
    x_orig, _ = o.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        clean = net(x).argmax(1) == y
        ours, theirs = net(adv).argmax(1) == y, net(x_orig).argmax(1) == y
    assert float((adv - x).abs().max()) <= 2 / 255 + 1e-6
    assert 0.15 < float(theirs.float().mean()) < float(clean.float().mean()) - 0.1  # the attacks matter here
    assert int(((adv - x_orig).flatten(1).abs().amax(1) > 1e-5).sum()) <= 2
    assert abs(int(ours.sum()) - int(theirs.sum())) <= 1
    assert not (ours & ~clean).any()  # a misclassified image is returned unchanged
    assert torch.equal(adv[~clean], x[~clean])
    assert attack.robust_accuracy["apgd-t"] == pytest.approx(float(ours.float().mean()))


def test_cheaper_settings_agree_with_the_original_set_the_same_way():
    """``n_iter``/``n_restarts`` (the leaderboard's CPU AA-lite: 20 iterations, 1 restart) against the
    original's APGD and APGD-T set up as their constructor would for 20 iterations, on the same 64 real images.
    Same tolerance argument as above. Guards against the override missing a member (APGD-T keeping 100
    iterations, APGD-CE keeping 5 restarts), which changes which images survive."""
    net = model()
    x, y = images(64)
    attack = attack_factories()["autoattack"](net, eps=2 / 255, norm="linf", version="custom",
                                              attacks_to_run=["apgd-ce", "apgd-t"], n_iter=20, n_restarts=1)
    assert [(m.steps, m.n_restarts) for m in attack.members] == [(20, 1), (20, 1)]
    adv = attack(x, y)
    o = pyautoattack.AutoAttack(net, norm="Linf", eps=2 / 255, version="custom", attacks=["apgd-ce", "apgd-t"],
                                seed=0)
    o.verbose = False
    o.apgd.n_restarts = 1
    for a in (o.apgd, o.apgd_targeted):  # as the original's constructor sets them for n_iter=20 (setting
        a.n_iter = 20                      # n_iter alone after construction keeps the step-size checkpoints of 100)
        a.n_iter_2, a.n_iter_min, a.size_decr = max(int(0.22 * 20), 1), max(int(0.06 * 20), 1), max(int(0.03 * 20), 1)
    x_orig, _ = o.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        ours, theirs = net(adv).argmax(1) == y, net(x_orig).argmax(1) == y
    assert int(((adv - x_orig).flatten(1).abs().amax(1) > 1e-5).sum()) <= 2
    assert abs(int(ours.sum()) - int(theirs.sum())) <= 1
    with pytest.raises(ValueError, match="n_iter"):
        AutoAttack(net, n_iter=0)
    with pytest.raises(ValueError, match="n_restarts"):
        AutoAttack(net, n_restarts=1.5)


def test_registered_autoattack_is_the_original_and_torchattacks_own_is_unchanged():
    """Guards against the registry still handing out torchattacks' 10-iteration AutoAttack (or a
    monkeypatched one), against the flatplug spelling of the norm not reaching the members, and
    against scoring reusing version-1 results (the AttackInfo version must change)."""
    net = model()
    aa = attack_factories()["autoattack"](net, eps=8 / 255, norm="linf")
    assert isinstance(aa, AutoAttack) and isinstance(aa, torchattacks.attack.Attack)
    assert aa.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [m.steps for m in aa.members[:3]] == [100, 100, 100] and aa.members[3].n_queries == 5000
    assert all(m.norm == "Linf" for m in aa.members)
    assert plugins.info("attacks", "autoattack").version == "2"
    assert plugins.info("attacks", "autoattack_torchattacks").version == "1"
    upstream = attack_factories()["autoattack_torchattacks"](net, eps=8 / 255)
    assert isinstance(upstream, torchattacks.AutoAttack)
    assert torchattacks.AutoAttack.__module__ == "torchattacks.attacks.autoattack"
    plain = torchattacks.AutoAttack(net, eps=8 / 255, seed=0)
    assert [a.steps for a in plain._autoattack.attacks[:3]] == [10, 10, 10]  # torchattacks' own default


def test_torchattacks_contract_normalisation_and_model_mode():
    """The Attack contract: with the normalisation outside the model and ``set_normalization_used``,
    the attack takes and returns normalised images and finds the same adversarial images as on the
    model with the normalisation inside; the model's training mode is restored. Guards against the
    setting not reaching the members (they would attack the un-normalised model)."""
    net = model("eran_conv_small_pgd")  # normalises with CIFAR-10's mean and std
    x, y = images(8)
    norm_layer, body = net[0], torch.nn.Sequential(*list(net.children())[1:])
    mean, std = norm_layer.mean.flatten(), norm_layer.std.flatten()
    kwargs = {"eps": 8 / 255, "version": "custom", "attacks_to_run": ["apgd-ce"]}
    inside = AutoAttack(net, **kwargs)(x, y)
    outside = AutoAttack(body, **kwargs)
    outside.set_normalization_used(mean.tolist(), std.tolist())
    assert all(m.normalization_used is not None for m in outside.members)
    body.train()
    adv = outside((x - mean[:, None, None]) / std[:, None, None], y)
    assert body.training
    assert torch.allclose(adv * std[:, None, None] + mean[:, None, None], inside, atol=1e-5)


@pytest.mark.parametrize("kwargs, words", [
    ({"version": "bogus"}, "version: expected one of standard, plus, rand, custom"),
    ({"version": "standard", "attacks_to_run": ["apgd-ce"]}, "pass version='custom'"),
    ({"version": "custom"}, "needs a non-empty list"),
    ({"version": "custom", "attacks_to_run": ["apgd-ce", "apgdt"]}, "unknown 'apgdt'"),
    ({"norm": "L1"}, "expected 'Linf' or 'L2'"),
])
def test_bad_settings_are_clear_errors(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("'", "'")):
        AutoAttack(model(), **kwargs)
