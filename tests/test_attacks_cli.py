"""AutoAttack and every attack from the CLI (issue 11 section 3), on a real zoo model and real images.

Oracle: torchattacks' own classes run directly on the same model, images and seed; robust
accuracies must be equal (the adapter promises to behave exactly as torchattacks does). For
AutoAttack the oracle is the original code (``pyautoattack``, RobustBench's evaluation), which the
registered ``autoattack`` follows.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import shared_path
from flatplug.cli import main
from flatplug.sources import ZooSource, load_imagefolder
from flatplug.store import Store

torchattacks = pytest.importorskip("torchattacks")
pytest.importorskip("flatplug_torchattacks")
EPS = 8 / 255
MODEL = "marabou_small"


@pytest.fixture(scope="module")
def real():
    zoo, cifar = shared_path("models", "zoo.json"), shared_path("data", "cifar10", "test.tar.gz")
    model = ZooSource(zoo).load(MODEL).module.eval()
    return zoo, cifar, model


def _args(real, store, n, *attack_args):
    zoo, cifar, _ = real
    return ["score", "--manifest", str(zoo), "--models", MODEL, "--dataset", "imagefolder", "--data", str(cifar),
            "--n", str(n), "--eps", "8/255", "--measures", "relative_flatness", "--store", str(store), "--no-report",
            "--quiet", "--device", "cpu", *attack_args]


def _accuracy(model, attack, x, y) -> float:
    torch.manual_seed(0)
    adv = attack(x, y)
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def _attack_rows(store):
    with Store(store) as db:
        return {r["name"]: r for r in db.rows() if r["kind"] == "attack"}


def test_autoattack_from_the_cli_equals_the_original_autoattack(real, tmp_path):
    """Guards against the CLI passing PGD's settings (steps) to AutoAttack, dropping its version, or
    producing other numbers than the original AutoAttack (standard version, as RobustBench runs it);
    and against the report/export naming the attack without its full settings (issue 11)."""
    pyautoattack = pytest.importorskip("pyautoattack")
    _, cifar, model = real
    store = tmp_path / "aa.db"
    assert main(_args(real, store, 16, "--attack", "pgd", "--attack", "autoattack", "--steps", "10")) == 0
    rows = _attack_rows(store)
    aa = rows["autoattack"]
    assert json.loads(aa["params"]) == {"eps": EPS, "seed": 0}  # no steps: AutoAttack takes none
    x, y = load_imagefolder(cifar, n=16)
    original = pyautoattack.AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0)
    original.verbose = False
    x_adv, _ = original.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        expected = float((model(x_adv).argmax(1) == y).float().mean())
    assert aa["value"] == pytest.approx(expected, abs=1e-12)
    label = aa["details"]["attack"]
    for setting in ("eps=8/255", "norm=Linf", "version=standard", "n_classes=10", "seed=0"):
        assert setting in label, label
    check = aa["details"]["gradient_masking"]  # the two attacks are compared on the same images
    assert check["gap"] == pytest.approx(rows["pgd"]["value"] - aa["value"], abs=1e-12)
    assert check["flagged"] is (check["gap"] > 0.10)
    out = tmp_path / "e.csv"
    assert main(["export", "--store", str(store), "--out", str(out)]) == 0
    assert "version=standard" in out.read_text()


def test_fgsm_and_square_from_the_cli_with_an_option_for_one_attack(real, tmp_path):
    """Guards against `--attack fgsm`/`square` failing from the CLI (PGD-only settings passed to them) and
    against ATTACK.KEY options reaching the wrong attack."""
    _, cifar, model = real
    store = tmp_path / "fs.db"
    assert main(_args(real, store, 8, "--attack", "fgsm", "--attack", "square",
                      "--attack-option", "square.n_queries=100")) == 0
    rows = _attack_rows(store)
    assert json.loads(rows["fgsm"]["params"]) == {"eps": EPS}
    assert json.loads(rows["square"]["params"]) == {"eps": EPS, "n_queries": 100, "seed": 0}
    x, y = load_imagefolder(cifar, n=8)
    assert rows["fgsm"]["value"] == pytest.approx(_accuracy(model, torchattacks.FGSM(model, eps=EPS), x, y), abs=1e-12)
    square = torchattacks.Square(model, eps=EPS, n_queries=100, seed=0)
    assert rows["square"]["value"] == pytest.approx(_accuracy(model, square, x, y), abs=1e-12)


def test_autoattack_version_is_selectable_and_robustbench_defaults_to_standard():
    """Guards against AutoAttack's version being unreachable from the CLI, and against the RobustBench
    source defaulting to anything but RobustBench's own evaluation (AutoAttack standard)."""
    import argparse

    from flatplug.cli.score import SOURCE_ATTACKS, _attacks
    from flatplug.scoring import effective_settings

    args = argparse.Namespace(attack=["autoattack"], eps="8/255", steps=None, norm="L2",
                              attack_option=["version=rand"])
    (spec,) = _attacks(args, "zoo")
    assert spec == {"name": "autoattack", "eps": EPS, "norm": "l2", "version": "rand"}
    settings = effective_settings({**spec, "seed": 0}, n_classes=10)
    assert settings["version"] == "rand" and settings["n_classes"] == 10
    args = argparse.Namespace(attack=None, eps=None, steps=None, norm=None, attack_option=[])
    assert _attacks(args, "robustbench") == [{"name": "autoattack", "version": "standard", "eps": EPS}]
    assert _attacks(args, "robustbench", {"threat_model": "L2"}) == [  # RobustBench's L2 leaderboard
        {"name": "autoattack", "version": "standard", "eps": 0.5, "norm": "l2"}]
    assert SOURCE_ATTACKS["robustbench"][0]["version"] == "standard"


def test_parse_eps_takes_decimal_numerators_and_refuses_the_rest():
    """``--eps 0.25/255`` failed (``Fraction`` takes only integers around a slash)."""
    from flatplug.scoring.attack_specs import parse_eps

    assert parse_eps("8/255") == 8 / 255 and parse_eps(" 8 / 255 ") == 8 / 255
    assert parse_eps("0.25/255") == 0.25 / 255 and parse_eps("1e-3") == 0.001 and parse_eps(0.5) == 0.5
    for bad in ("8/255/2", "8/0", "eps", "", "/255"):
        with pytest.raises(ValueError, match="eps: expected a number or a fraction"):
            parse_eps(bad)


def test_robustbench_threat_model_sets_the_norm_and_radius_of_every_attack():
    """RobustBench's L2 leaderboard is scored in L2 also when the attack is named: ``--attack pgd``
    under ``--threat-model L2`` ran torchattacks' L-inf PGD at eps 0.5 (robust accuracy near 0,
    reported as the L2 result); now the spec says L2 and that fixed L-inf attack is refused, naming
    its L2 counterpart. ImageNet's L-inf radius is 4/255 (every RobustBench ImageNet L-inf record);
    corruptions have no attack of their own and are refused unless attack and radius are named."""
    import argparse

    from flatplug.cli.score import UsageError, _attacks
    from flatplug.scoring import check_attack, resolve_attacks

    def args(attack=None, eps=None, norm=None):
        return argparse.Namespace(attack=attack, eps=eps, steps=None, norm=norm, attack_option=[])

    l2 = {"threat_model": "L2"}
    (spec,) = _attacks(args(["pgd"]), "robustbench", l2)
    assert spec == {"name": "pgd", "eps": 0.5, "norm": "l2"}
    with pytest.raises(ValueError, match="fixed-norm attack.*'pgdl2'"):
        check_attack(resolve_attacks([spec])[0])
    assert _attacks(args(["autoattack"]), "robustbench", l2) == [{"name": "autoattack", "eps": 0.5, "norm": "l2"}]
    (spec,) = _attacks(args(["pgdl2"]), "robustbench", l2)
    check_attack(resolve_attacks([spec])[0])
    assert _attacks(args(["pgd"], norm="Linf"), "robustbench", l2)[0]["norm"] == "linf"  # --norm still wins
    assert _attacks(args(), "robustbench", {"threat_model": "Linf", "dataset": "imagenet"})[0]["eps"] == 4 / 255
    assert _attacks(args(), "robustbench", {"threat_model": "Linf", "dataset": "cifar100"})[0]["eps"] == EPS
    for given in (args(), args(["pgd"]), args(eps="8/255")):
        with pytest.raises(UsageError, match="corrupted images, not under an L-p attack"):
            _attacks(given, "robustbench", {"threat_model": "corruptions"})
    assert _attacks(args(["pgd"], eps="2/255"), "robustbench", {"threat_model": "corruptions"}) == [
        {"name": "pgd", "eps": 2 / 255}]


def test_the_default_radius_follows_the_dataset():
    """``flatplug score --dataset mnist`` without --eps attacked MNIST at CIFAR-10's 8/255, where a robust
    MNIST model loses nothing (madry_cnn_tiny: robust = clean accuracy) and local flatness measured a ball
    30x too small. MNIST now defaults to its usual 0.3, the demo's digits to 0.1, anything else to 8/255."""
    import argparse

    from flatplug.cli.score import _attacks

    def args(dataset):
        return argparse.Namespace(attack=None, eps=None, steps=None, norm=None, attack_option=[], dataset=dataset)

    assert _attacks(args("mnist"), "zoo")[0]["eps"] == 0.3
    assert _attacks(args("imagefolder"), "zoo")[0]["eps"] == EPS
    assert _attacks(args(None), "demo")[0]["eps"] == 0.1
    explicit = argparse.Namespace(attack=None, eps="0.1", steps=None, norm=None, attack_option=[], dataset="mnist")
    assert _attacks(explicit, "zoo")[0]["eps"] == 0.1
