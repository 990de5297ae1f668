"""The ``ray`` executor's registration and options; nothing here starts a Ray cluster."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

import flatplug as fp  # noqa: E402
from flatplug.scoring import Job, ModelSpec, TensorData  # noqa: E402
from flatplug.store import Store  # noqa: E402
from flatplug_ray import RayConnectionError, RayExecutor  # noqa: E402


def test_registered_through_the_flatplug_entry_point():
    points = [ep for ep in metadata.entry_points(group="flatplug") if ep.name == "ray"]
    assert [ep.value for ep in points] == ["flatplug_ray.plugin"]
    assert "ray" in fp.list_plugins("executors")
    assert fp.plugins.get("executors", "ray") is RayExecutor


@pytest.mark.parametrize("kwargs, named", [
    ({"num_cpus_per_task": -1}, "num_cpus_per_task"),
    ({"num_cpus_per_task": float("nan")}, "num_cpus_per_task"),
    ({"num_cpus_per_task": 0}, "num_cpus_per_task"),
    ({"num_gpus_per_task": -0.5}, "num_gpus_per_task"),
    ({"num_gpus_per_task": "1"}, "num_gpus_per_task"),
    ({"max_retries": 1.5}, "max_retries"),
    ({"max_retries": -1}, "max_retries"),
    ({"torch_threads": 0}, "torch_threads"),
    ({"torch_threads": True}, "torch_threads"),
    ({"address": ""}, "address"),
    ({"init_kwargs": "num_cpus=2"}, "init_kwargs"),
])
def test_bad_options_are_clear_errors(kwargs, named):
    with pytest.raises(ValueError, match=named):
        RayExecutor(**kwargs)


def test_good_options_are_kept():
    ex = RayExecutor(address=" auto ", num_gpus_per_task=0.5, num_cpus_per_task=0, max_retries=0,
                     torch_threads=3, init_kwargs={"namespace": "x"})
    assert (ex.address, ex.num_gpus_per_task, ex.num_cpus_per_task, ex.max_retries, ex.torch_threads,
            ex.init_kwargs) == ("auto", 0.5, 0, 0, 3, {"namespace": "x"})


def test_unknown_option_through_score_is_a_type_error(tmp_path):
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, dtype=torch.long)
    spec = ModelSpec.of("zoo", "m", manifest=str(tmp_path / "zoo.json"))
    with pytest.raises(TypeError, match="num_gpu"):
        fp.scoring.score([spec], (x, y), measures=["relative_flatness"], store=tmp_path / "s.db",
                         executor="ray", num_gpu=1)


def test_a_complete_store_submits_nothing_and_never_starts_ray(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, dtype=torch.long)
    data = TensorData("d", x, y)
    jobs = [Job(ModelSpec.of("zoo", name, manifest="nowhere.json"), data, {"relative_flatness": {}},
                [{"name": "pgd", "eps": 0.1}], "cpu", model_fingerprint=f"weights-{name}",
                data_fingerprint=data.fingerprint()) for name in ("a", "b")]
    with Store(tmp_path / "s.db") as store:
        for job in jobs:
            for row in job.planned():
                store.put(**job.key(row), value=0.25)
        ex = RayExecutor()
        ex.run(jobs, store, quiet=True)
        assert len(store) == 6
    assert ex.submitted == [] and ex.skipped == ["a", "b"]
    assert not ray.is_initialized()


def test_unreachable_cluster_is_a_clear_error(tmp_path, monkeypatch):
    if Path("/tmp/ray/ray_current_cluster").exists():
        pytest.skip("a Ray cluster runs on this machine; 'auto' would join it")
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    x, y = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    job = Job(ModelSpec.of("zoo", "a", manifest="nowhere.json"), TensorData("d", x, y), {}, [{"name": "pgd", "eps": 0.1}],
              "cpu")
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(RayConnectionError, match="cannot reach a Ray cluster at address 'auto'.*ray start --head"):
            RayExecutor(address="auto").run([job], store, quiet=True)
        assert len(store) == 0
    assert not ray.is_initialized()
