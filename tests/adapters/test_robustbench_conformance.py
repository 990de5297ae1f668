"""Conformance with RobustBench: a load is RobustBench's own load, and the metadata is its model_info record.

For models of three datasets/threat models, a checkpoint in the layout RobustBench's authors used
(a ``state_dict`` under DataParallel's ``module.`` prefix, seeded random values in every tensor so
that a dropped or misplaced tensor shows) is placed where ``robustbench.utils.load_model`` looks
(``<model_dir>/<dataset>/<threat_model>/<Name>.pt``), with the network blocked. The source's
module must give logits identical (bit for bit) to the module RobustBench's own loader returns on
real CIFAR images, and its metadata must restate the ``model_info`` record of ../shared.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

pytest.importorskip("flatplug_robustbench")

from conftest import shared_path  # noqa: E402
from flatplug.sources import load_imagefolder  # noqa: E402
from flatplug_robustbench import RobustBenchSource  # noqa: E402
from flatplug_robustbench._compat import import_robustbench  # noqa: E402

#: (dataset, threat model, name): PreActResNet-18s, small enough for the CPU
MODELS = [("cifar10", "Linf", "Wong2020Fast"), ("cifar10", "L2", "Rice2020Overfitting"),
          ("cifar100", "Linf", "Rice2020Overfitting")]


def _place_checkpoint(root, dataset: str, threat: str, name: str, seed: int) -> None:
    rb = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    model = rb.model_zoo.model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]["model"]()
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, value in model.state_dict().items():
        if not value.is_floating_point() or key.endswith(("mu", "sigma", "mean", "std")) and value.numel() <= 3:
            state[key] = value.clone()  # counters and the model's own normalisation constants
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(value.shape, generator=g)
    folder = root / dataset / threat
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in state.items())}, folder / f"{name}.pt")


@pytest.mark.parametrize("dataset, threat, name", MODELS)
def test_load_is_logit_identical_to_robustbench_load_model(tmp_path, no_network, dataset, threat, name):
    _place_checkpoint(tmp_path, dataset, threat, name, seed=len(name))
    rb = import_robustbench()
    theirs = rb.utils.load_model(name, model_dir=str(tmp_path), dataset=dataset, threat_model=threat).eval()
    ours = RobustBenchSource(model_dir=tmp_path, dataset=dataset, threat_model=threat).load(name).module
    x, _ = load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=4, seed=2)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == (4, 100 if dataset == "cifar100" else 10)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert float(expected.std()) > 0  # the random weights reached the output
    assert type(ours) is type(theirs) and not ours.training


@pytest.mark.parametrize("dataset, threat, name", MODELS)
def test_metadata_restates_the_model_info_record(tmp_path, no_network, dataset, threat, name):
    folder = shared_path("robustbench", "model_info")
    record = json.loads((folder / dataset / threat / f"{name}.json").read_text())
    _place_checkpoint(tmp_path, dataset, threat, name, seed=1)
    for source in (RobustBenchSource(model_dir=tmp_path, dataset=dataset, threat_model=threat, model_info=folder),
                   RobustBenchSource(model_dir=tmp_path, dataset=dataset, threat_model=threat)):  # shipped snapshot
        meta = source.load(name).metadata
        assert meta["architecture"] == record["architecture"]
        assert meta["venue"] == record["venue"] and meta["paper"] == record["name"]
        assert meta["reported_clean_accuracy"] == pytest.approx(float(record["clean_acc"]) / 100, abs=1e-12)
        assert meta["autoattack_accuracy"] == pytest.approx(float(record["autoattack_acc"]) / 100, abs=1e-12)
        robust = record.get("external", record["autoattack_acc"])
        assert meta["reported_robust_accuracy"] == pytest.approx(float(robust) / 100, abs=1e-12)
        assert meta["eps"] == record["eps"] and meta["additional_data"] == record["additional_data"]
        assert (meta["dataset"], meta["threat_model"], meta["robustbench_name"]) == (dataset, threat, name)
