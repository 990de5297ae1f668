"""The zoo-manifest model source on the 24 real checkpoints in ../shared/models.

References are independent: checkpoints read with torch.load directly, the manifest read with
json, a residual network evaluated by hand with torch.nn.functional, and accuracy ranges from
../shared/models/README.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import shared_path
from flatplug.sources import (CheckpointError, LabeledImages, ManifestError, Normalize, UnknownModelError,
                              ZooSource, build_network, load_imagefolder, load_mnist, with_normalization)
from flatplug.types import LoadedModel


@pytest.fixture(scope="module")
def manifest() -> Path:
    return shared_path("models", "zoo.json")


@pytest.fixture(scope="module")
def raw(manifest: Path) -> dict:
    return json.loads(manifest.read_text())


@pytest.fixture(scope="module")
def zoo(manifest: Path) -> ZooSource:
    return ZooSource(manifest)


@pytest.fixture(scope="module")
def cifar200() -> LabeledImages:
    return load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=200, seed=0)


@pytest.fixture(scope="module")
def mnist200() -> LabeledImages:
    return load_mnist(shared_path("data", "mnist"), n=200, seed=0)


def _accuracy(model: nn.Module, data: LabeledImages) -> float:
    with torch.no_grad():
        return float((model(data.x).argmax(1) == data.y).float().mean())


# -- listing ---------------------------------------------------------------------------------


def test_names_and_datasets(zoo: ZooSource, raw: dict, manifest: Path) -> None:
    assert zoo.names() == list(raw) and len(zoo) == 24
    assert len(zoo.names("cifar10")) == 16 and len(zoo.names("mnist")) == 8
    assert set(zoo.names("mnist")) == {k for k, v in raw.items() if v["dataset"] == "mnist"}
    assert zoo.datasets() == ["cifar10", "mnist"]
    assert ZooSource(manifest.parent).names() == zoo.names()  # a folder holding zoo.json works too
    with pytest.raises(ValueError, match=r"no model .* is trained on 'cifar'\. Did you mean 'cifar10'\?"):
        zoo.names("cifar")
    entry = zoo.entry("resnet2b")
    assert entry == raw["resnet2b"]
    entry["layers"].clear()  # a copy: the source is unaffected
    assert zoo.entry("resnet2b")["layers"] == raw["resnet2b"]["layers"]


# -- every checkpoint loads ----------------------------------------------------------------


def test_every_model_builds_and_loads_its_checkpoint(zoo: ZooSource, raw: dict, manifest: Path) -> None:
    for name, entry in raw.items():
        state = torch.load(manifest.parent / entry["file"], map_location="cpu", weights_only=True)
        assert set(build_network(entry["layers"]).state_dict()) == set(state), name
        loaded = zoo.load(name)
        assert isinstance(loaded, LoadedModel) and loaded.name == name and loaded.dataset == entry["dataset"]
        assert loaded.threat_model is None
        got = loaded.module.state_dict()
        assert set(got) == set(state), name  # normalisation adds no keys: module.load_state_dict(file) works
        assert all(torch.equal(got[k], state[k]) for k in state), name
        assert not any(m.training for m in loaded.module.modules()), name
        assert isinstance(loaded.module[0], Normalize)
        c, h, w = entry["input"]
        assert loaded.metadata["input_shape"] == [c, h, w]
        assert loaded.metadata["mean"] == entry["mean"] and loaded.metadata["std"] == entry["std"]
        assert loaded.metadata["training"] == entry["training"] and loaded.metadata["source"] == entry["source"]
        assert loaded.metadata["manifest"] == str(manifest.resolve())
        assert loaded.metadata["num_parameters"] == sum(t.numel() for t in state.values())
        json.dumps(loaded.metadata)  # JSON-able, for the results store
        with torch.no_grad():
            out = loaded.module(torch.full((2, c, h, w), 0.5))
        assert out.shape == (2, 10), name


def test_module_loads_the_raw_checkpoint(zoo: ZooSource, manifest: Path, raw: dict, mnist200: LabeledImages) -> None:
    """The loaded module holds the file's tensors under the file's keys, so ``module.load_state_dict(file)`` restores
    it: scrambled weights come back to the same logits. Guards against a source that does not load the checkpoint
    (or loads it under other keys) and a wrapper whose state_dict keys differ from the file's."""
    model = zoo.load("trades_smallcnn").module
    state = torch.load(manifest.parent / raw["trades_smallcnn"]["file"], weights_only=True)
    got = model.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    x = mnist200.x[:64]
    with torch.no_grad():
        before = model(x)
        for p in model.parameters():
            p.mul_(-0.5)
        assert not torch.equal(model(x), before)
    model.load_state_dict(state, strict=True)  # keys are the manifest's layer indices
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert float((before.argmax(1) == mnist200.y[:64]).float().mean()) > 0.9


# -- clean accuracy on real test images ---------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet4b", "wong_small_8px", "trades_smallcnn", "eran_mnist_6x100_nat"])
def test_clean_accuracy_in_the_documented_range(zoo: ZooSource, name: str, cifar200: LabeledImages,
                                                mnist200: LabeledImages) -> None:
    """README: clean accuracy ~0.28..0.77 on CIFAR-10 and 0.85..0.995 on MNIST (200 images: +-0.05 slack)."""
    loaded = zoo.load(name)
    if loaded.dataset == "cifar10":
        assert 0.25 <= _accuracy(loaded.module, cifar200) <= 0.8
    else:
        assert 0.85 <= _accuracy(loaded.module, mnist200) <= 1.0


def test_some_models_are_good(zoo: ZooSource, cifar200: LabeledImages, mnist200: LabeledImages) -> None:
    """Chance is 0.1: a loader that scrambled channels, scaling or labels could not reach these."""
    assert max(_accuracy(zoo.load(n).module, cifar200) for n in ("resnet4b", "marabou_large")) > 0.5
    assert max(_accuracy(zoo.load(n).module, mnist200) for n in ("trades_smallcnn", "madry_cnn_tiny")) > 0.95


# -- normalisation and architecture, checked by hand ----------------------------------------------


def test_normalize_front_equals_manual_normalisation(zoo: ZooSource, raw: dict, manifest: Path,
                                                     cifar200: LabeledImages) -> None:
    entry = raw["eran_conv_small_pgd"]  # a non-trivial mean and std
    bare = build_network(entry["layers"])
    bare.load_state_dict(torch.load(manifest.parent / entry["file"], weights_only=True))
    bare.eval()
    x = cifar200.x[:16]
    mean = torch.tensor(entry["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(entry["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = bare((x - mean) / std)
        got = zoo.load("eran_conv_small_pgd").module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the normalisation matters: raw [0, 1] inputs give different logits
    with torch.no_grad():
        assert (bare(x) - expected).abs().max() > 0.1


def test_residual_network_matches_a_hand_written_forward(zoo: ZooSource, raw: dict, manifest: Path,
                                                         cifar200: LabeledImages) -> None:
    """resnet2b: conv-relu, block(body + 1x1 conv shortcut), relu, block(body + identity), relu, MLP."""
    s = torch.load(manifest.parent / raw["resnet2b"]["file"], weights_only=True)
    layers = raw["resnet2b"]["layers"]
    mean = torch.tensor(raw["resnet2b"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(raw["resnet2b"]["std"]).view(1, 3, 1, 1)

    def conv(h: torch.Tensor, key: str, spec: list[int]) -> torch.Tensor:
        return F.conv2d(h, s[f"{key}.weight"], s[f"{key}.bias"], stride=spec[3], padding=spec[4])

    b1, b2 = layers[2]["residual"], layers[4]["residual"]
    x = cifar200.x[:8].double()
    s = {k: v.double() for k, v in s.items()}
    h = F.relu(conv((x - mean.double()) / std.double(), "0", layers[0]["conv"]))
    h = F.relu(conv(F.relu(conv(h, "2.body.0", b1["body"][0]["conv"])), "2.body.2", b1["body"][2]["conv"])
               + conv(h, "2.shortcut.0", b1["shortcut"][0]["conv"]))
    assert b2["shortcut"] == []  # identity shortcut
    h = F.relu(conv(F.relu(conv(h, "4.body.0", b2["body"][0]["conv"])), "4.body.2", b2["body"][2]["conv"]) + h)
    h = F.relu(F.linear(h.flatten(1), s["7.weight"], s["7.bias"]))
    expected = F.linear(h, s["9.weight"], s["9.bias"])
    model = zoo.load("resnet2b").module.double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_build_network_modules() -> None:
    net = build_network([{"conv": [1, 2, 3, 1, 1]}, {"relu": None}, {"maxpool": 2}, {"dropout": 0.5},
                         {"flatten": None}, {"linear": [8, 3]},
                         {"residual": {"body": [{"linear": [3, 3]}], "shortcut": []}}])
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "MaxPool2d", "Dropout", "Flatten", "Linear",
                                               "Residual"]
    assert net[0].stride == (1, 1) and net[0].padding == (1, 1) and net[2].kernel_size == 2 and net[3].p == 0.5
    assert list(net.state_dict()) == ["0.weight", "0.bias", "5.weight", "5.bias", "6.body.0.weight", "6.body.0.bias"]
    x = torch.rand(4, 1, 4, 4)
    net.eval()
    with torch.no_grad():
        h = net[:6](x)
        torch.testing.assert_close(net(x), h + F.linear(h, net[6].body[0].weight, net[6].body[0].bias))


def test_build_network_errors() -> None:
    with pytest.raises(ManifestError, match=r"layers\[1\]: unknown layer kind 'gelu'"):
        build_network([{"relu": None}, {"gelu": None}])
    with pytest.raises(ManifestError, match=r"layers\[0\]: 'conv' takes \[in, out, kernel, stride, padding\]"):
        build_network([{"conv": [3, 16, 4]}])
    with pytest.raises(ManifestError, match=r"layers\[0\]\.residual\.body\[0\]: 'linear' takes \[in, out\]"):
        build_network([{"residual": {"body": [{"linear": [3]}], "shortcut": []}}])
    with pytest.raises(ManifestError, match=r"layers\[0\]: each layer is a one-key object"):
        build_network([{"relu": None, "flatten": None}])
    with pytest.raises(ManifestError, match="'dropout' takes a probability"):
        build_network([{"dropout": 1.5}])
    with pytest.raises(ManifestError, match="'relu' takes no arguments"):
        build_network([{"relu": 3}])
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match=r"expected images \[N, 3, H, W\]"):
        Normalize([0.5] * 3, [0.2] * 3)(torch.rand(2, 1, 4, 4))


def test_with_normalization_keeps_keys() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    model = with_normalization(net, [0.5], [0.25])
    assert list(model.state_dict()) == list(net.state_dict()) == ["1.weight", "1.bias"]
    x = torch.rand(3, 1, 2, 2)
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25))
    other = with_normalization(nn.Linear(2, 2), [0.0], [1.0])
    assert list(other.state_dict()) == ["net.weight", "net.bias"]


# -- errors ------------------------------------------------------------------------------------


def _local_zoo(tmp_path: Path, raw: dict, entries: dict) -> Path:
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps(entries))
    return path


def test_unknown_model_suggests_close_names(zoo: ZooSource, manifest: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        zoo.load("resnet2")
    message = str(info.value)
    assert "'resnet2b'" in message and str(manifest.resolve()) in message
    with pytest.raises(LookupError, match="unknown model 'zzz'"):
        zoo.entry("zzz")


def test_missing_checkpoint(tmp_path: Path, raw: dict) -> None:
    entries = {"madry_cnn_tiny": dict(raw["madry_cnn_tiny"], file="weights/nowhere.pt")}
    zoo = ZooSource(_local_zoo(tmp_path, raw, entries))
    with pytest.raises(FileNotFoundError) as info:
        zoo.load("madry_cnn_tiny")
    assert str(tmp_path / "weights" / "nowhere.pt") in str(info.value) and "'madry_cnn_tiny'" in str(info.value)


def test_corrupt_checkpoints(tmp_path: Path, raw: dict, manifest: Path) -> None:
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 8)
    half = (manifest.parent / raw["madry_cnn_tiny"]["file"]).read_bytes()
    (tmp_path / "half.pt").write_bytes(half[: len(half) // 2])
    shutil.copy(manifest.parent / raw["oval_base"]["file"], tmp_path / "other.pt")  # a different architecture
    torch.save({"weights": [1, 2]}, tmp_path / "notdict.pt")
    entries = {name: dict(raw["madry_cnn_tiny"], file=f"{name}.pt") for name in ("garbage", "half", "other", "notdict")}
    zoo = ZooSource(_local_zoo(tmp_path, raw, entries))
    for name in ("garbage", "half"):
        with pytest.raises(CheckpointError, match=rf"model '{name}': cannot read the checkpoint .*{name}\.pt"):
            zoo.load(name)
    with pytest.raises(CheckpointError) as info:
        zoo.load("other")
    message = str(info.value)
    assert "other.pt" in message and "does not fit the layer list" in message
    assert "shape mismatches 0.weight: checkpoint [8, 3, 4, 4] vs network [4, 1, 5, 5]" in message
    with pytest.raises(CheckpointError, match=r"model 'notdict': the checkpoint .*notdict\.pt holds a dict, not a state_dict"):
        zoo.load("notdict")
    missing = torch.load(manifest.parent / raw["madry_cnn_tiny"]["file"], weights_only=True)
    del missing["2.bias"]
    torch.save(missing, tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['2.bias'\]"):
        zoo.load("garbage")


def test_bad_manifests(tmp_path: Path, raw: dict) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": {"file": "a.pt",}')
    with pytest.raises(ManifestError, match=r"bad.json: not valid JSON .*line 1"):
        ZooSource(bad)
    entry = dict(raw["madry_cnn_tiny"])
    del entry["std"]
    with pytest.raises(ManifestError, match=r"model 'm': missing key 'std'"):
        ZooSource(_local_zoo(tmp_path, raw, {"m": entry}))
    with pytest.raises(ManifestError, match=r"'mean' must be a list of 1 numbers"):
        ZooSource(_local_zoo(tmp_path, raw, {"m": dict(raw["madry_cnn_tiny"], mean=[0.1, 0.2, 0.3])}))
    with pytest.raises(ManifestError, match="non-empty JSON object"):
        ZooSource(_local_zoo(tmp_path, raw, []))
    with pytest.raises(FileNotFoundError, match="no zoo manifest"):
        ZooSource(tmp_path / "absent.json")
    broken_layers = dict(raw["madry_cnn_tiny"], layers=[{"conv": [1, 2]}])
    zoo = ZooSource(_local_zoo(tmp_path, raw, {"m": broken_layers}))
    with pytest.raises(ManifestError, match=r"model 'm': layers\[0\]: 'conv' takes"):
        zoo.load("m")


def test_optional_manifest_keys_travel(tmp_path: Path, raw: dict, manifest: Path) -> None:
    shutil.copy(manifest.parent / raw["madry_cnn_tiny"]["file"], tmp_path / "m.pt")
    entry = dict(raw["madry_cnn_tiny"], file="m.pt", threat_model="Linf", clean_accuracy=0.98)
    loaded = ZooSource(_local_zoo(tmp_path, raw, {"m": entry})).load("m", device=None)
    assert loaded.threat_model == "Linf" and loaded.metadata["clean_accuracy"] == 0.98
    assert loaded.metadata["checkpoint"] == str(tmp_path.resolve() / "m.pt")


def test_fingerprint_follows_the_checkpoint_and_what_builds_the_model(manifest: Path, tmp_path: Path) -> None:
    """Guards against a zoo fingerprint that misses a change scoring would see: other weights in the file, or
    the same file read with another normalisation (the loaded model differs, so stored results must not match)."""
    import hashlib

    from flatplug.sources import ZooSource

    entries = json.loads(manifest.read_text())
    entry = dict(entries["oval_base"], file="w.pt")
    shutil.copyfile(manifest.parent / entries["oval_base"]["file"], tmp_path / "w.pt")
    (tmp_path / "zoo.json").write_text(json.dumps({"oval_base": entry,
                                                   "shifted": dict(entry, mean=[m + 0.1 for m in entry["mean"]])}))
    zoo = ZooSource(tmp_path / "zoo.json")
    base = zoo.fingerprint("oval_base")
    assert len(base) == 64 and base != zoo.fingerprint("shifted")  # same file, other normalisation
    digest = hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    from flatplug.sources.fingerprint import combine

    assert base == combine(checkpoint=digest, layers=entry["layers"], input=entry["input"], mean=entry["mean"],
                           std=entry["std"])
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1e-3
    torch.save(state, tmp_path / "w.pt")
    import os

    st = (tmp_path / "w.pt").stat()  # a coarse file-system clock must not hide the rewrite from the cache
    os.utime(tmp_path / "w.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ZooSource(tmp_path / "zoo.json").fingerprint("oval_base") != base
    with pytest.raises(UnknownModelError, match="Did you mean 'oval_base'"):
        zoo.fingerprint("oval_bas")
