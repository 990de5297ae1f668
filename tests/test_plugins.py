"""The plugin system: built-ins through the entry-point path, duplicates, broken plugins, disabling."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import flatplug as fp
from flatplug import plugins
from conftest import tiny_batch, tiny_mlp

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


def make_dist(tmp_path: Path, monkeypatch, dist: str, entry_name: str, module: str, source: str | None) -> None:
    """An installed-looking distribution on sys.path with one entry point in group flatplug."""
    info = tmp_path / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[flatplug]\n{entry_name} = {module}\n")
    if source is not None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtin_measures_are_registered():
    names = fp.list_plugins("measures")
    for name in fp.measures.MEASURES:
        assert name in names
    entry = plugins.get_plugins().registry("measures")["relative_flatness"]
    assert entry.plugin == "flatplug" and entry.version == fp.__version__


def test_measure_by_name_matches_function():
    net, (x, y) = tiny_mlp(), tiny_batch()
    direct = fp.measures.relative_flatness(net, (x, y))
    by_name = fp.measure("relative_flatness", net, (x, y))
    assert by_name.value == direct.value and by_name.name == "relative_flatness"


def test_unknown_name_lists_available_and_closest():
    with pytest.raises(LookupError) as err:
        fp.measure("relative_flatnes", tiny_mlp(), tiny_batch())
    msg = str(err.value)
    assert "Did you mean 'relative_flatness'?" in msg and "hessian_trace" in msg
    with pytest.raises(ValueError, match="kind"):
        fp.list_plugins("measure")


def test_entry_point_plugin_is_found(tmp_path, monkeypatch):
    make_dist(tmp_path, monkeypatch, "fp-extra", "extra", "fp_extra_mod", """
        import flatplug
        @flatplug.hookimpl
        def flatplug_register_measures(register):
            register("constant_seven", lambda model, data, **kw: flatplug.Measurement("constant_seven", 7.0))
    """)
    assert fp.measure("constant_seven", tiny_mlp(), tiny_batch()).value == 7.0
    entry = plugins.get_plugins().registry("measures")["constant_seven"]
    assert (entry.plugin, entry.version) == ("extra", "0.3")


def test_duplicate_name_names_both_plugins(tmp_path, monkeypatch):
    make_dist(tmp_path, monkeypatch, "fp-dup", "dupe", "fp_dup_mod", """
        import flatplug
        @flatplug.hookimpl
        def flatplug_register_measures(register):
            register("hessian_trace", lambda model, data, **kw: None)
    """)
    with pytest.raises(plugins.DuplicatePluginError) as err:
        fp.list_plugins("measures")
    assert "'flatplug'" in str(err.value) and "'dupe'" in str(err.value)


def test_disable_plugins_env(tmp_path, monkeypatch):
    make_dist(tmp_path, monkeypatch, "fp-dup", "dupe", "fp_dup_mod2", """
        import flatplug
        @flatplug.hookimpl
        def flatplug_register_measures(register):
            register("hessian_trace", lambda model, data, **kw: None)
    """)
    monkeypatch.setenv("FLATPLUG_DISABLE_PLUGINS", "other, dupe")
    assert "hessian_trace" in fp.list_plugins("measures")
    plugins.reset()
    monkeypatch.setenv("FLATPLUG_DISABLE_PLUGINS", "flatplug")
    names = fp.list_plugins("measures")
    assert "relative_flatness" not in names  # the built-ins are blocked like any plugin
    assert plugins.get_plugins().registry("measures")["hessian_trace"].plugin == "dupe"


def test_broken_plugin_warns_and_rest_works(tmp_path, monkeypatch):
    make_dist(tmp_path, monkeypatch, "fp-broken", "broken", "fp_broken_mod", "raise ImportError('needs libfoo')\n")
    with pytest.warns(plugins.PluginWarning, match="'broken' failed to load.*needs libfoo"):
        names = fp.list_plugins("measures")
    assert "relative_flatness" in names
    assert "broken" in plugins.get_plugins().failed


def test_in_process_registration():
    class Mine:
        @fp.hookimpl
        def flatplug_register_attacks(self, register):
            register("noop", object)

    plugins.get_plugins().register(Mine(), name="mine", version="9")
    assert fp.list_plugins("attacks") == sorted(set(fp.list_plugins("attacks")) | {"noop"})
    assert plugins.get_plugins().registry("attacks")["noop"].plugin == "mine"


def test_cli_plugins_lists_kind_plugin_version():
    out = subprocess.run(
        [sys.executable, "-m", "flatplug", "plugins"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    line = next(l for l in out.splitlines() if l.split()[:2] == ["measure", "relative_flatness"])
    assert line.split()[2:] == ["flatplug", fp.__version__]


def test_third_party_example_installs_and_is_found(tmp_path):
    """examples/third_party_plugin is a separate distribution registering `weight_norm_sq`."""
    example = ROOT / "examples" / "third_party_plugin"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "--no-deps", "--no-build-isolation", "--no-index", str(example)], check=True)
    try:
        code = textwrap.dedent("""
            import torch, flatplug as fp
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Linear(5, 3))
            x, y = torch.rand(4, 5), torch.tensor([0, 1, 2, 0])
            m = fp.measure("weight_norm_sq", net, (x, y))
            ref = sum(float((p ** 2).sum()) for p in net.parameters())
            assert abs(m.value - ref) < 1e-6 * ref, (m.value, ref)
            print("found", m.value)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "found" in out.stdout
    finally:
        subprocess.run(pip + ["uninstall", "-y", "flatplug-example-plugin"], check=True)


def _example_module():
    import importlib.util

    path = ROOT / "examples" / "third_party_plugin" / "flatplug_example_plugin.py"
    spec = importlib.util.spec_from_file_location("flatplug_example_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_plugin_measures_get_what_builtins_get(tmp_path):
    """Guards against scoring treating built-in measures specially (issue 14): the example plugin's
    declared zoo defaults, attack-following settings and version must reach the stored rows exactly as a
    built-in's do, and a bumped version must be computed afresh. Values are checked against sums and
    per-image gradients computed here."""
    import torch.nn.functional as F

    from conftest import shared_path
    from flatplug.scoring import ModelSpec, resolve_measures
    from flatplug.sources import ZooSource, load_imagefolder
    from flatplug.store import Store

    zoo, cifar = shared_path("models", "zoo.json"), shared_path("data", "cifar10", "test.tar.gz")
    module = _example_module()
    plugins.get_plugins().register(module, name="example", version="0.1.0")
    attack = {"name": "pgd", "eps": 4 / 255, "norm": "linf", "steps": 2, "random_start": False}
    chosen = resolve_measures(["weight_norm_sq", "first_order_gain", "local_flatness"], attack)
    assert chosen["weight_norm_sq"] == {"which": "weights"}
    assert chosen["first_order_gain"] == {"eps": 4 / 255, "norm": "linf"}
    assert (chosen["local_flatness"]["eps"], chosen["local_flatness"]["norm"]) == (4 / 255, "linf")  # a built-in
    x, y = load_imagefolder(cifar, n=12)
    spec = ModelSpec.of("zoo", "oval_base", manifest=str(zoo))
    with pytest.raises(ValueError, match="measure 'first_order_gain': norm: expected one of 'linf', 'l2', got 'l3'"):
        fp.score([spec], ("cifar", x, y), measures={"first_order_gain": {"norm": "l3"}}, attack=attack,
                 store=tmp_path / "refused.db", device="cpu", quiet=True)  # the plugin's check, before any work
    assert not (tmp_path / "refused.db").exists()
    frame = fp.score([spec], ("cifar", x, y), measures=["weight_norm_sq", "first_order_gain"], attack=attack,
                     store=tmp_path / "s.db", device="cpu", quiet=True).set_index("name")
    assert (frame["status"] == "ok").all(), frame["error"].tolist()
    model = ZooSource(zoo).load("oval_base").module
    weights = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters() if p.dim() >= 2)
    assert frame.loc["weight_norm_sq", "value"] == pytest.approx(weights, rel=1e-6)
    assert frame.loc["weight_norm_sq", "impl_version"] == "example:2"
    assert json_params(frame.loc["first_order_gain", "params"]) == {"eps": 4 / 255, "norm": "linf"}
    gains = []
    for i in range(len(y)):  # one image at a time: an independent route to the per-sample gradients
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        gains.append(4 / 255 * float(g.abs().sum()))
    assert frame.loc["first_order_gain", "value"] == pytest.approx(sum(gains) / len(gains), rel=1e-4)

    class Bumped:  # the same measure with its numbers changed: version 3
        @fp.hookimpl
        def flatplug_register_measures(self, register):
            register("weight_norm_sq", module.weight_norm_sq, version="3", zoo_defaults={"which": "weights"})

    plugins.get_plugins().unregister("example")
    plugins.get_plugins().register(Bumped(), name="example", version="0.2.0")
    fp.score([spec], ("cifar", x, y), measures=["weight_norm_sq"], attack=attack, store=tmp_path / "s.db",
             device="cpu", quiet=True)
    with Store(tmp_path / "s.db") as store:
        versions = sorted(r["impl_version"] for r in store.rows() if r["name"] == "weight_norm_sq")
    assert versions == ["example:2", "example:3"]


def json_params(value):
    import json

    return json.loads(value) if isinstance(value, str) else value
