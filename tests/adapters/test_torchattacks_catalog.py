"""Every attack the torchattacks adapter registers runs on a real CIFAR-10 model and real images.

Like torchattacks' own suite: output shape and range, robust accuracy <= clean accuracy, the
perturbation within the attack's eps (measured here, not taken from the attack), and targeted
mode wherever the attack supports it. Parameters are cut down (few steps, few queries) so the
whole catalogue runs in seconds; the attacks themselves are unchanged.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flatplug_torchattacks")

import torch  # noqa: E402
import torchattacks  # noqa: E402
from torchattacks_support import EPS, accuracy, images, model, single_thread  # noqa: E402,F401

import flatplug as fp  # noqa: E402
from flatplug import plugins  # noqa: E402
from flatplug_torchattacks import SKIPPED, AutoAttack, FlatRegionAttack, LocalFlatnessPGD, attack_factories  # noqa: E402
from flatplug_torchattacks.catalog import FIXED_NORMS  # noqa: E402

#: cheap settings per registered attack (the rest are the attack's defaults)
CHEAP = {
    "vanila": {}, "gn": {}, "fgsm": {}, "ffgsm": {}, "bim": {"steps": 3}, "rfgsm": {"steps": 3}, "pgd": {"steps": 3},
    "eotpgd": {"steps": 2, "eot_iter": 2}, "tpgd": {"steps": 3}, "mifgsm": {"steps": 3}, "upgd": {"steps": 3},
    "apgd": {"steps": 3}, "apgdt": {"steps": 3}, "difgsm": {"steps": 3}, "tifgsm": {"steps": 3, "len_kernel": 5},
    "jitter": {"steps": 3}, "nifgsm": {"steps": 3}, "pgdrs": {"steps": 2, "noise_batch_size": 2},
    "sinifgsm": {"steps": 2, "m": 2}, "vmifgsm": {"steps": 2, "N": 2}, "vnifgsm": {"steps": 2, "N": 2},
    "spsa": {"eps": EPS, "nb_sample": 8, "max_batch_size": 8}, "jsma": {"gamma": 0.001},
    "eadl1": {"max_iterations": 10, "binary_search_steps": 1}, "eaden": {"max_iterations": 10, "binary_search_steps": 1},
    "pifgsm": {"num_iter_set": 2}, "pifgsmpp": {"num_iter_set": 2}, "cw": {"steps": 5},
    "pgdl2": {"eps": 0.5, "steps": 3}, "deepfool": {"steps": 5}, "pgdrsl2": {"eps": 0.5, "steps": 2, "noise_batch_size": 2},
    "sparsefool": {"steps": 1}, "onepixel": {"steps": 1, "popsize": 4}, "pixle": {},
    "fab": {"steps": 3}, "autoattack": {"version": "custom", "attacks_to_run": ["apgd-ce"]},
    "autoattack_torchattacks": {"version": "standard"}, "square": {"n_queries": 20},
    "local_flatness_pgd": {"steps": 2}, "flat_region": {"steps": 3},
}
#: attacks that process one image at a time and are slow: fewer images
SLOW = {"jsma": 2, "sparsefool": 2, "onepixel": 4}
OWN = {"local_flatness_pgd": LocalFlatnessPGD, "flat_region": FlatRegionAttack}
#: the adapter's own classes registered with input checks (a subclass of the class)
OWN_CHECKED = {"autoattack": AutoAttack}


def _run(name: str, n: int, targeted: bool = False):
    net = model()
    x, y = images(16)
    x, y = x[:n], y[:n]
    attack = attack_factories()[name](net, **CHEAP[name])
    if targeted:
        attack.set_mode_targeted_by_function(lambda im, lab: (lab + 1) % 10, quiet=True)
    torch.manual_seed(0)
    np.random.seed(0)
    return attack, x, y, attack(x, y)


def _bound(name: str, attack) -> tuple[str, float] | None:
    """(norm, radius) the output must respect, from the attack's own settings."""
    cls_name = type(attack).__name__
    norm = FIXED_NORMS.get(cls_name) or str(getattr(attack, "norm", "")).lower()
    radius = getattr(attack, "eps", None)
    if name in ("pifgsm", "pifgsmpp"):
        radius = attack.max_epsilon
    if name in ("gn", "vanila") or radius is None or norm not in ("linf", "l2"):
        return None
    return norm, float(radius)


def _check_output(name, attack, x, adv):
    adv = adv.detach()  # APGD returns a tensor that requires grad
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert torch.isfinite(adv).all()
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    bound = _bound(name, attack)
    if bound is not None:
        norm, radius = bound
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= radius * (1 + 1e-5) + 1e-6, (name, float(size.max()), radius)


def test_every_torchattacks_attack_is_registered_or_skipped_for_a_reason():
    names = set(attack_factories())
    expected = {n.lower() for n in torchattacks.__all__ if n not in SKIPPED} | set(OWN) | {"autoattack_torchattacks"}
    assert names == expected
    assert set(SKIPPED) == {"MultiAttack", "LGV"}
    assert set(CHEAP) == names  # a new attack must get test settings here


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_every_registered_attack_runs_on_a_real_model(name):
    n = SLOW.get(name, 8)
    attack, x, y, adv = _run(name, n)
    assert isinstance(attack, torchattacks.attack.Attack)
    if name in OWN:
        assert type(attack) is OWN[name]
    elif name in OWN_CHECKED:
        assert isinstance(attack, OWN_CHECKED[name]) and type(attack).__name__ == OWN_CHECKED[name].__name__
    else:
        assert isinstance(attack, getattr(torchattacks, type(attack).__name__))
    _check_output(name, attack, x, adv)
    if name == "vanila":
        assert torch.equal(adv, x)
    elif name != "gn":  # Gaussian noise is no attack: it may fix a wrong prediction by chance
        assert accuracy(model(), adv, y) <= accuracy(model(), x, y)


def _supports_targeted(name: str) -> bool:
    return "targeted" in attack_factories()[name](model(), **CHEAP[name]).supported_mode


TARGETED = [name for name in sorted(CHEAP) if name not in ("gn", "vanila")]


@pytest.mark.parametrize("name", TARGETED)
def test_targeted_mode_wherever_supported(name):
    if not _supports_targeted(name):
        attack = attack_factories()[name](model(), **CHEAP[name])
        with pytest.raises(ValueError, match="Targeted mode is not supported"):
            attack.set_mode_targeted_by_function(lambda im, lab: (lab + 1) % 10, quiet=True)
        return
    attack, x, y, adv = _run(name, SLOW.get(name, 4), targeted=True)
    assert attack.targeted
    _check_output(name, attack, x, adv)


@pytest.mark.parametrize("name", ["pgd", "flat_region", "mifgsm"])
def test_targeted_attacks_reach_their_targets(name):
    net = model()
    x, y = images(16)
    target = (y + 1) % 10
    attack = attack_factories()[name](net, eps=EPS, steps=10)
    attack.set_mode_targeted_by_function(lambda im, lab: (lab + 1) % 10, quiet=True)
    torch.manual_seed(0)
    adv = attack(x, y)
    with torch.no_grad():
        before = float((net(x).argmax(1) == target).float().mean())
        after = float((net(adv).argmax(1) == target).float().mean())
    assert after >= 0.5 and after > before


def test_parameters_pass_through_and_norm_spellings():
    net = model()
    apgd = fp.plugins.get("attacks", "apgd")(net, eps=4 / 255, norm="l2", steps=7)
    assert (apgd.eps, apgd.norm, apgd.steps) == (4 / 255, "L2", 7)
    pgd = fp.plugins.get("attacks", "pgd")(net, eps=2 / 255, step_size=1 / 255, steps=4, norm="linf")
    assert (pgd.eps, pgd.alpha, pgd.steps) == (2 / 255, 1 / 255, 4)
    lf = fp.plugins.get("attacks", "local_flatness_pgd")(net, eps=0.5, norm="L2", q=2)
    assert (lf.eps, lf.norm, lf.q) == (0.5, "l2", 2)
    pi = fp.plugins.get("attacks", "pifgsm")(net, eps=4 / 255)
    assert pi.max_epsilon == 4 / 255


def test_bad_parameters_are_clear_errors():
    net = model()
    with pytest.raises(ValueError, match="'pgd'.*fixed-norm.*linf.*'pgdl2' for L2"):
        attack_factories()["pgd"](net, norm="l2")
    with pytest.raises(ValueError, match="takes no parameter 'stpes'.*accepts: eps, step_size, steps, random_start"):
        attack_factories()["pgd"](net, stpes=3)
    with pytest.raises(ValueError, match="'cw'.*no parameter 'eps'.*no eps bound"):
        attack_factories()["cw"](net, eps=EPS)
    with pytest.raises(ValueError, match="norm: expected 'Linf' or 'L2'"):
        attack_factories()["apgd"](net, norm="l7")


def test_the_plugin_lists_every_attack():
    names = fp.list_plugins("attacks")
    assert set(attack_factories()) <= set(names)
    registered = {r.name: r.plugin for r in plugins.all_registered() if r.kind == "attacks"}
    assert all(registered[n] == "torchattacks" for n in attack_factories())
    out = subprocess.run([sys.executable, "-m", "flatplug", "plugins"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[:3]) for line in out.stdout.splitlines() if line.strip()}
    for name in attack_factories():
        assert ("attack", name, "torchattacks") in rows
