"""The ``robustbench`` model source: real RobustBench architectures loaded offline, metadata, clear errors.

No test touches the network: checkpoints are written into a temporary ``model_dir`` from
RobustBench's own constructors, and the network is blocked while loading to prove it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

pytest.importorskip("flatplug_robustbench")

import flatplug as fp  # noqa: E402
from conftest import shared_path  # noqa: E402
from flatplug.sources import CheckpointError, UnknownModelError, load_imagefolder  # noqa: E402
from flatplug_robustbench import CheckpointNotFoundError, RobustBenchSource  # noqa: E402
from flatplug_robustbench import source as source_module  # noqa: E402
from flatplug_robustbench._compat import import_robustbench  # noqa: E402

NAME = "Wong2020Fast"  # cifar10 / Linf, PreActResNet-18 (RobustBench's Wong2020FastNet)


def _zoo(dataset: str = "cifar10", threat: str = "Linf"):
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]


def _random_state(model: torch.nn.Module, seed: int) -> OrderedDict:
    """A state_dict with seeded random values everywhere (weights and BN statistics), so a load
    that dropped or misplaced any tensor would change the outputs."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            out[key] = value.clone()
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif key.endswith(("mu", "sigma")):
            out[key] = value.clone()  # the model's normalisation constants
        else:
            out[key] = 0.1 * torch.randn(value.shape, generator=g)
    return out


@pytest.fixture(scope="module")
def wong_state() -> OrderedDict:
    model = _zoo()[NAME]["model"]()
    return _random_state(model, seed=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, wong_state) -> Path:
    """RobustBench's layout with a Wong2020Fast checkpoint as its authors saved theirs: a dict with
    'state_dict' whose keys carry DataParallel's 'module.' prefix."""
    root = tmp_path_factory.mktemp("models")
    folder = root / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in wong_state.items()), "epoch": 15},
               folder / f"{NAME}.pt")
    return root


@pytest.fixture(scope="module")
def cifar_images() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=4, seed=1)
    return x, y


def test_plugin_registers_source_and_datasets():
    assert "robustbench" in fp.list_plugins("sources")
    for name in ("cifar10", "cifar100", "imagenet"):
        assert name in fp.list_plugins("datasets")
    assert fp.plugins.get("sources", "robustbench") is RobustBenchSource
    # the core's names are still the core's
    assert {"zoo", "demo"} <= set(fp.list_plugins("sources"))
    assert {"digits", "mnist", "imagefolder"} <= set(fp.list_plugins("datasets"))


def test_names_are_robustbench_zoo_entries(tmp_path):
    source = RobustBenchSource(model_dir=tmp_path)
    assert source.names() == list(_zoo())
    assert NAME in source.names("cifar10")
    # cross-check against the leaderboard folder: every cifar10/L2 zoo entry is on the leaderboard
    # (builds of robustbench 1.1.1 on different indexes list 18 or 21 of its 21 entries)
    info = shared_path("robustbench", "model_info", "cifar10", "L2")
    l2 = RobustBenchSource(model_dir=tmp_path, threat_model="L2").names()
    assert len(l2) >= 18 and set(l2) <= {p.stem for p in info.glob("*.json")}
    assert set(RobustBenchSource(model_dir=tmp_path, dataset="imagenet").names()) == set(_zoo("imagenet", "Linf"))


def test_loads_real_architecture_offline(model_dir, wong_state, cifar_images, no_network):
    x, _ = cifar_images
    loaded = RobustBenchSource(model_dir=model_dir).load(NAME)
    assert loaded.name == NAME and loaded.dataset == "cifar10" and loaded.threat_model == "Linf"
    module = loaded.module
    assert not module.training
    assert type(module).__name__ == "Wong2020FastNet"
    state = module.state_dict()
    assert set(state) == set(wong_state)
    for key, value in wong_state.items():
        assert torch.equal(state[key], value), key

    reference = _zoo()[NAME]["model"]()
    reference.load_state_dict(wong_state)
    reference.eval()
    with torch.no_grad():
        expected = reference(x)
        got = module(x)
        fresh = _zoo()[NAME]["model"]().eval()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, fresh, atol=1e-3)  # the weights matter: a fresh model differs


def test_loaded_metadata_from_model_info_folder(model_dir, no_network):
    folder = shared_path("robustbench", "model_info")
    record = json.loads((folder / "cifar10" / "Linf" / f"{NAME}.json").read_text())
    meta = RobustBenchSource(model_dir=model_dir, model_info=folder).load(NAME).metadata
    assert meta["source"] == "robustbench"
    assert meta["leaderboard"] == record
    assert meta["architecture"] == record["architecture"] == "PreActResNet-18"
    assert meta["venue"] == record["venue"]
    assert meta["reported_clean_accuracy"] == pytest.approx(float(record["clean_acc"]) / 100)
    assert meta["reported_robust_accuracy"] == pytest.approx(float(record["autoattack_acc"]) / 100)
    assert meta["input_shape"] == [3, 32, 32]
    assert meta["checkpoint"] == [str(model_dir / "cifar10" / "Linf" / f"{NAME}.pt")]
    json.dumps(meta)  # a store can keep it


def test_metadata_snapshot_matches_folder_for_loaded_model(model_dir, no_network):
    folder = shared_path("robustbench", "model_info")
    record = json.loads((folder / "cifar10" / "Linf" / f"{NAME}.json").read_text())
    meta = RobustBenchSource(model_dir=model_dir).load(NAME).metadata  # no model_info: the shipped snapshot
    assert meta["architecture"] == record["architecture"]
    assert meta["reported_clean_accuracy"] == pytest.approx(float(record["clean_acc"]) / 100)
    assert meta["autoattack_accuracy"] == pytest.approx(float(record["autoattack_acc"]) / 100)
    assert "snapshot" in meta["leaderboard_source"]


def test_metadata_robust_accuracy_follows_leaderboard_rule(tmp_path):
    folder = shared_path("robustbench", "model_info")
    # an entry with an external evaluation: the leaderboard ranks by it, not by autoattack_acc
    rec = json.loads((folder / "cifar10" / "Linf" / "Kang2021Stable.json").read_text())
    meta = RobustBenchSource(model_dir=tmp_path, model_info=folder).metadata("Kang2021Stable")
    assert meta["reported_robust_accuracy"] == pytest.approx(float(rec["external"]) / 100)
    assert meta["autoattack_accuracy"] == pytest.approx(float(rec["autoattack_acc"]) / 100)
    # corruptions: the corruption accuracy
    rec = json.loads((folder / "cifar10" / "corruptions" / "Standard.json").read_text())
    meta = RobustBenchSource(model_dir=tmp_path, threat_model="corruptions", model_info=folder).metadata("Standard")
    assert meta["reported_robust_accuracy"] == pytest.approx(float(rec["corruptions_acc"]) / 100)
    assert meta["reported_clean_accuracy"] == pytest.approx(float(rec["clean_acc"]) / 100)


def test_missing_checkpoint_without_downloads_is_quick_and_clear(tmp_path, no_network):
    source = RobustBenchSource(model_dir=tmp_path, allow_download=False)
    start = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError) as info:
        source.load(NAME)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert str(tmp_path / "cifar10" / "Linf" / f"{NAME}.pt") in message
    assert repr(NAME) in message and "allow_download" in message
    assert not (tmp_path / "cifar10").exists()  # nothing half-made


def test_missing_checkpoint_with_unreachable_host_fails_fast(tmp_path, monkeypatch):
    # a host under the reserved .invalid domain never resolves, with or without a network
    monkeypatch.setattr(source_module, "GDRIVE_HOST", "robustbench-download.invalid")
    source = RobustBenchSource(model_dir=tmp_path, probe_timeout=1.0)  # downloads allowed (the default)
    start = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError, match="cannot be reached") as info:
        source.load(NAME)
    assert time.perf_counter() - start < 3.0
    assert str(tmp_path / "cifar10" / "Linf" / f"{NAME}.pt") in str(info.value)


def test_missing_ensemble_names_every_member_file(tmp_path, no_network):
    gdrive = _zoo()["Chen2020Adversarial"]["gdrive_id"]
    assert isinstance(gdrive, list)
    with pytest.raises(CheckpointNotFoundError) as info:
        RobustBenchSource(model_dir=tmp_path, allow_download=False).load("Chen2020Adversarial")
    for i in range(len(gdrive)):
        assert str(tmp_path / "cifar10" / "Linf" / f"Chen2020Adversarial.pt_m{i}.pt") in str(info.value)


def test_unknown_names_list_close_matches(tmp_path):
    source = RobustBenchSource(model_dir=tmp_path)
    with pytest.raises(UnknownModelError, match="Did you mean 'Wong2020Fast'"):
        source.load("Wong2020Fst")
    with pytest.raises(UnknownModelError, match="cifar10/Linf"):
        RobustBenchSource(model_dir=tmp_path, threat_model="L2").load(NAME)
    # on the leaderboard (model_info has it) but without weights in the zoo
    assert (shared_path("robustbench", "model_info", "cifar10", "Linf") / "Madry2018Towards.json").is_file()
    assert "Madry2018Towards" not in _zoo()
    with pytest.raises(UnknownModelError, match="publishes no weights"):
        source.load("Madry2018Towards")


def test_bad_options_are_clear(tmp_path):
    with pytest.raises(ValueError, match="dataset: expected one of cifar10, cifar100, imagenet"):
        RobustBenchSource(model_dir=tmp_path, dataset="mnist")
    with pytest.raises(ValueError, match="threat_model"):
        RobustBenchSource(model_dir=tmp_path, threat_model="L3")
    with pytest.raises(ValueError, match="no cifar100/L2 model zoo"):
        RobustBenchSource(model_dir=tmp_path, dataset="cifar100", threat_model="L2")
    with pytest.raises(ValueError, match="allow_download"):
        RobustBenchSource(model_dir=tmp_path, allow_download="maybe")
    with pytest.raises(ValueError, match="probe_timeout"):
        RobustBenchSource(model_dir=tmp_path, probe_timeout=0)
    with pytest.raises(FileNotFoundError, match="model_info"):
        RobustBenchSource(model_dir=tmp_path, model_info=tmp_path / "absent")
    with pytest.raises(ValueError, match="dataset='cifar100'"):
        RobustBenchSource(model_dir=tmp_path).names("cifar100")
    # CLI strings work
    assert RobustBenchSource(model_dir=tmp_path, allow_download="false", threat_model="linf").allow_download is False


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path, no_network):
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    path = folder / f"{NAME}.pt"
    path.write_bytes(b"<html>quota exceeded</html>")
    source = RobustBenchSource(model_dir=tmp_path)
    with pytest.raises(CheckpointError, match="cannot load") as info:
        source.load(NAME)
    assert str(path) in str(info.value)
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, path)  # another model's tensors
    with pytest.raises(CheckpointError, match=NAME):
        source.load(NAME)


def test_checkpoint_with_python_objects_needs_trust(tmp_path, wong_state, no_network):
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": wong_state, "args": argparse.Namespace(lr=0.1)}, folder / f"{NAME}.pt")
    with pytest.raises(CheckpointError, match="trust_checkpoints=True"):
        RobustBenchSource(model_dir=tmp_path).load(NAME)
    loaded = RobustBenchSource(model_dir=tmp_path, trust_checkpoints=True).load(NAME)
    assert torch.equal(loaded.module.state_dict()["linear.weight"], wong_state["linear.weight"])
    import os

    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ  # restored


def test_factory_through_the_registry(model_dir, cifar_images, no_network):
    factory = fp.plugins.get("sources", "robustbench")
    loaded = factory(model_dir=str(model_dir), dataset="cifar10", threat_model="Linf").load(NAME, device="cpu")
    x, _ = cifar_images
    with torch.no_grad():
        assert loaded.module(x).shape == (x.shape[0], 10)


def test_scores_offline_and_records_a_missing_checkpoint(model_dir, wong_state, cifar_images, tmp_path, no_network):
    from flatplug.scoring import ModelSpec, score  # fp.score once the lead exports it

    x, y = cifar_images
    reference = _zoo()[NAME]["model"]()
    reference.load_state_dict(wong_state)
    with torch.no_grad():
        expected_clean = float((reference.eval()(x).argmax(1) == y).float().mean())
    models = [ModelSpec.of("robustbench", NAME, model_dir=str(model_dir)),
              ModelSpec.of("robustbench", "Rice2020Overfitting", model_dir=str(model_dir), allow_download=False)]
    frame = score(models, ("cifar10-real", x, y), measures={}, attack={"name": "pgd", "eps": 0.0, "steps": 2},
                     store=tmp_path / "results.db", quiet=True)
    ok = frame[(frame["model"] == NAME) & (frame["status"] == "ok")]
    clean = ok[ok["kind"] == "accuracy"]["value"].item()
    robust = ok[ok["kind"] == "attack"]["value"].item()
    assert clean == pytest.approx(expected_clean)
    assert robust == pytest.approx(expected_clean)  # eps = 0: the attack cannot change anything
    failed = frame[frame["model"] == "Rice2020Overfitting"]
    assert (failed["status"] == "failed").all() and len(failed) >= 1
    assert "Rice2020Overfitting.pt" in failed["error"].iloc[0]


def test_rows_are_keyed_by_the_checkpoint_without_an_extra_load(tmp_path, wong_state, cifar_images, monkeypatch,
                                                              no_network):
    """Guards against the driver loading every RobustBench model once more only to hash its parameters,
    and against a rewritten checkpoint under the same name getting the old numbers back."""
    from flatplug.scoring import ModelSpec, score
    from flatplug.store import Store

    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    checkpoint = folder / f"{NAME}.pt"
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in wong_state.items())}, checkpoint)
    loads = []
    real_load = RobustBenchSource.load
    monkeypatch.setattr(RobustBenchSource, "load", lambda self, *a, **k: loads.append(a) or real_load(self, *a, **k))
    source = RobustBenchSource(model_dir=tmp_path / "models", allow_download=False)
    assert source.fingerprint("Rice2020Overfitting") is None  # not on disk: scoring loads (and hashes) instead
    first = source.fingerprint(NAME)
    assert len(first) == 64 and not loads

    def run() -> None:
        score([ModelSpec.of("robustbench", NAME, model_dir=str(tmp_path / "models"))], ("cifar10-real", *cifar_images),
              measures={}, attack={"name": "pgd", "eps": 0.0, "steps": 1}, store=tmp_path / "r.db", quiet=True,
              device="cpu")

    run()
    assert len(loads) == 1  # the scoring load only
    with Store(tmp_path / "r.db") as db:
        assert {r["model_fingerprint"] for r in db.rows()} == {first}
    run()
    assert len(loads) == 1  # every row stored for these bytes: nothing loaded at all
    retrained = _random_state(_zoo()[NAME]["model"](), seed=8)
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in retrained.items())}, checkpoint)
    assert source.fingerprint(NAME) not in (None, first)
    run()
    assert len(loads) == 2
    with Store(tmp_path / "r.db") as db:
        assert len({r["model_fingerprint"] for r in db.rows()}) == 2


def test_cli_refuses_a_run_with_a_missing_checkpoint_before_scoring(model_dir, tmp_path, monkeypatch, capsys):
    """Guards against `flatplug score --source robustbench` scoring the models it has and only then
    finding one it cannot get: offline, the missing file is named before any work, with one probe."""
    from flatplug.cli import main

    probes = []
    monkeypatch.setattr(source_module, "reachable", lambda host, timeout: probes.append(host) or False)
    store = tmp_path / "r.db"
    code = main(["score", "--source", "robustbench", "--source-option", f"model_dir={model_dir}",
                 "--models", f"{NAME},Rice2020Overfitting,Carmon2019Unlabeled", "--dataset", "imagefolder",
                 "--data", str(shared_path("data", "cifar10", "test.tar.gz")), "--n", "4", "--store", str(store),
                 "--no-report", "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "2 of 3 models cannot be loaded; nothing was scored" in err
    for name in ("Rice2020Overfitting", "Carmon2019Unlabeled"):
        assert str(model_dir / "cifar10" / "Linf" / f"{name}.pt") in err
    assert "cannot be reached" in err and probes == ["docs.google.com"]  # one probe for both
    import inspect

    from flatplug_robustbench._compat import import_robustbench

    # the host robustbench's own downloader fetches from (drive.google.com was probed before)
    assert "https://docs.google.com/" in inspect.getsource(import_robustbench().utils.download_gdrive)
    assert not store.exists()
