"""The ``ray`` executor on a local Ray cluster (2 CPUs, no network) with real zoo models and CIFAR-10.

The reference is the core's local executor, run in this process with the same settings and one
torch thread (as each Ray task uses), plus clean accuracy recomputed with plain torch. Worker
crashes are real: a task records its worker's pid and the test SIGKILLs that process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

ray = pytest.importorskip("ray")

from conftest import shared_path  # noqa: E402
from flatplug.scoring import DatasetSpec, InMemoryModel, Job, ModelSpec, resolve_measures, score  # noqa: E402
from flatplug.store import Store, canonical_params  # noqa: E402
from flatplug.types import LoadedModel  # noqa: E402
from flatplug_ray import RayExecutor  # noqa: E402

MODELS = ["oval_base", "eran_conv_small_pgd", "marabou_small", "sdp_cnn_a_adv"]
EPS = 8 / 255
# no random start: the torchattacks adapter's PGD (used when installed) draws it from the global RNG
ATTACK = {"name": "pgd", "eps": EPS, "steps": 2, "random_start": False}
MEASURES = {
    "relative_flatness": {},
    "hessian_eigenvalues": {"k": 1, "max_iter": 5},
    "hessian_trace": {"probes": 3},
    "local_flatness": {"steps": 2, "eps": EPS, "norm": "linf"},
}
KEY = ("model", "source", "dataset", "kind", "name", "params")


@pytest.fixture(scope="module")
def cluster():
    """A fresh local cluster for this module: 2 CPUs, no dashboard, no usage report."""
    if ray.is_initialized():
        ray.shutdown()
    old = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the crash test's model class lives in this test module, which workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
    else:
        os.environ["RAY_USAGE_STATS_ENABLED"] = old


@pytest.fixture(scope="module")
def setup():
    manifest = shared_path("models", "zoo.json")
    data = DatasetSpec("imagefolder", str(shared_path("data", "cifar10", "test.tar.gz")), n=64)
    specs = [ModelSpec.of("zoo", name, manifest=str(manifest)) for name in MODELS]
    return specs, data


def _one_thread(fn):
    """Run ``fn`` with one torch thread (what each Ray task uses), so float sums agree bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    specs, data = setup
    path = tmp_path_factory.mktemp("local") / "local.db"
    frame = _one_thread(lambda: score(specs, data, measures=MEASURES, attack=ATTACK, store=path, quiet=True))
    return {tuple(r[k] for k in KEY[:5]) + (canonical_params(r["params"]) if isinstance(r["params"], dict)
                                            else r["params"],): r for r in frame.to_dict("records")}


def _rows(store_path) -> dict[tuple, dict]:
    with Store(store_path) as db:
        return {tuple(r[k] for k in KEY): r for r in db.rows()}


def _same_value(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_ray_rows_equal_local_rows(cluster, setup, reference, tmp_path):
    specs, data = setup
    store = tmp_path / "ray.db"
    frame = score(specs, data, measures=MEASURES, attack=ATTACK, store=store, quiet=True, executor="ray")
    assert len(frame) == len(reference) == len(MODELS) * (2 + len(MEASURES))
    rows = _rows(store)
    assert set(rows) == set(reference)
    for key, row in rows.items():
        ref = reference[key]
        assert row["status"] == ref["status"] == "ok", (key, row["error"])
        assert _same_value(row["value"], ref["value"]), (key, row["value"], ref["value"])
        assert row["device"] == ref["device"] == "cpu"
        assert set(row["details"]) == set(ref["details"])

    # independent check of the clean-accuracy rows: plain torch on the same 64 images
    x, y = data.load()
    for spec in specs:
        module = spec.load("cpu").module.eval()
        with torch.no_grad():
            expected = (module(x).argmax(1) == y).float().mean().item()
        clean = rows[(spec.name, "zoo", data.key, "accuracy", "clean", "{}")]
        assert clean["value"] == pytest.approx(expected, abs=1e-12)


def _jobs(specs, data) -> list[Job]:
    measures = resolve_measures({k: dict(v) for k, v in MEASURES.items()}, dict(ATTACK))  # as fp.score does
    return [Job(spec, data, measures, [dict(ATTACK)], "cpu") for spec in specs]


def test_complete_jobs_are_not_submitted_and_partial_jobs_fill_only_their_gaps(cluster, setup, reference, tmp_path):
    specs, data = setup
    store_path = tmp_path / "partial.db"
    trace_params = resolve_measures(MEASURES, ATTACK)["hessian_trace"]
    missing = (MODELS[2], "zoo", data.key, "measure", "hessian_trace", canonical_params(trace_params))
    with Store(store_path) as db:  # every reference row but one
        for key, row in reference.items():
            if key != missing:
                params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
                db.put(**{k: v for k, v in row.items() if k not in ("created", "params")}, params=params)
    before = _rows(store_path)

    executor = RayExecutor()
    with Store(store_path) as db:
        executor.run(_jobs(specs, data), db, quiet=True)
    assert executor.submitted == [MODELS[2]]
    assert sorted(executor.skipped) == sorted(m for m in MODELS if m != MODELS[2])
    after = _rows(store_path)
    assert set(after) == set(reference)
    assert _same_value(after[missing]["value"], reference[missing]["value"])
    for key, row in before.items():  # rows already there were not written again
        assert after[key]["created"] == row["created"], key

    with Store(store_path) as db:  # now complete: nothing is submitted
        executor.run(_jobs(specs, data), db, quiet=True)
    assert executor.submitted == [] and sorted(executor.skipped) == sorted(MODELS)
    assert _rows(store_path) == after


def test_tensor_dataset_is_put_once_and_scored_like_local(cluster, setup, monkeypatch, tmp_path):
    specs, data = setup
    x, y = data.load()
    attack = {**ATTACK, "steps": 1}
    local = _one_thread(lambda: score(specs[:2], ("tensors", x, y), measures=["relative_flatness"], attack=attack,
                                      store=tmp_path / "local.db", quiet=True))
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(value) or real_put(value, **kw))
    remote = score(specs[:2], ("tensors", x, y), measures=["relative_flatness"], attack=attack,
                   store=tmp_path / "ray.db", quiet=True, executor="ray")
    assert len(puts) == 1 and puts[0][0] == "tensors" and puts[0][1] is x
    assert len(remote) == len(local) == 6
    expected = {(r["model"], r["kind"], r["name"]): r["value"] for r in local.to_dict("records")}
    for r in remote.to_dict("records"):
        assert r["status"] == "ok" and r["dataset"] == "tensors"
        assert _same_value(r["value"], expected[(r["model"], r["kind"], r["name"])])


class Stall(nn.Module):
    """Wraps a model; on its first forward in a process it logs the pid, and the first such process
    (the first attempt of the task) then waits to be killed."""

    def __init__(self, inner: nn.Module, folder: Path):
        super().__init__()
        self.inner = inner
        self.folder = str(folder)
        self.seen = False

    def forward(self, x):
        if not self.seen:
            self.seen = True
            folder = Path(self.folder)
            with open(folder / "attempts", "a") as f:
                f.write(f"{os.getpid()}\n")
            marker = folder / "victim"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(120)  # killed long before this ends
        return self.inner(x)


class CountingStore(Store):
    """A store that records every key written, to catch a row written twice."""

    def __init__(self, path):
        super().__init__(path)
        self.written: list[tuple] = []

    def put(self, **row):
        self.written.append((row["model"], row["kind"], row["name"], canonical_params(row.get("params"))))
        super().put(**row)


def _kill_when_ready(folder: Path, killed: list[int]) -> threading.Thread:
    def work():
        marker, deadline = folder / "victim", time.monotonic() + 90
        while time.monotonic() < deadline:
            text = marker.read_text().strip() if marker.exists() else ""
            if text:
                killed.append(int(text))
                os.kill(int(text), signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _stalled_job(setup, folder: Path, name: str) -> tuple[Job, LoadedModel]:
    specs, data = setup
    inner = specs[0].load("cpu")
    plain = LoadedModel(name, inner.module, inner.dataset, inner.threat_model, {**inner.metadata, "source": "test"})
    stalled = LoadedModel(name, Stall(inner.module, folder), inner.dataset, inner.threat_model, plain.metadata)
    attack = {**ATTACK, "steps": 1}
    return Job(InMemoryModel(stalled), data, {"relative_flatness": {}}, [attack], "cpu"), plain


def test_killed_worker_is_retried_without_duplicate_or_lost_rows(cluster, setup, tmp_path):
    specs, data = setup
    folder = tmp_path / "signals"
    folder.mkdir()
    job, plain = _stalled_job(setup, folder, "stalled")
    other = Job(specs[1], data, {"relative_flatness": {}}, [dict(job.attacks[0])], "cpu")
    killed: list[int] = []
    killer = _kill_when_ready(folder, killed)
    store = CountingStore(tmp_path / "crash.db")
    try:
        RayExecutor(max_retries=2).run([job, other], store, quiet=True)
        rows = store.rows()
    finally:
        store.close()
    killer.join(timeout=5)
    assert len(killed) == 1, "the task never signalled that it was running"
    attempts = [int(p) for p in (folder / "attempts").read_text().split()]
    assert len(attempts) == 2 and attempts[0] == killed[0] != attempts[1]  # retried in a new worker

    planned = {(j.model_name, kind, name, canonical_params(params)) for j in (job, other)
               for kind, name, params, _ in j.planned()}
    assert sorted(store.written) == sorted(planned)  # each row written exactly once
    assert {(r["model"], r["kind"], r["name"], r["params"]) for r in rows} == planned
    assert all(r["status"] == "ok" for r in rows)

    # the retried model's values equal the unwrapped model's, scored locally
    reference = _one_thread(lambda: score([plain], data, measures={"relative_flatness": {}}, attack=job.attacks[0],
                                          store=tmp_path / "ref.db", quiet=True))
    expected = {(r["kind"], r["name"]): r["value"] for r in reference.to_dict("records")}
    got = {(r["kind"], r["name"]): r["value"] for r in rows if r["model"] == "stalled"}
    assert got.keys() == expected.keys()
    assert all(_same_value(got[k], expected[k]) for k in got)


def test_task_out_of_retries_is_recorded_as_failure(cluster, setup, tmp_path):
    specs, data = setup
    folder = tmp_path / "signals"
    folder.mkdir()
    job, _ = _stalled_job(setup, folder, "doomed")
    killed: list[int] = []
    killer = _kill_when_ready(folder, killed)
    with Store(tmp_path / "fail.db") as store:
        RayExecutor(max_retries=0).run([job], store, quiet=True)
        rows = store.rows()
    killer.join(timeout=5)
    assert len(killed) == 1
    assert len((folder / "attempts").read_text().split()) == 1  # no retry
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["kind"], row["name"], row["status"]) == ("doomed", "failure", "worker", "failed")
    assert row["value"] is None and row["details"]["attempts"] == 1
    assert "1 attempt" in row["error"] and "Worker" in row["error"]


class Probe(nn.Module):
    """Wraps a model; its first forward in a process records the torch thread count there."""

    def __init__(self, inner: nn.Module, log: Path):
        super().__init__()
        self.inner, self.log, self.seen = inner, str(log), False

    def forward(self, x):
        if not self.seen:
            self.seen = True
            with open(self.log, "a") as f:
                f.write(f"{torch.get_num_threads()}\n")
        return self.inner(x)


def test_torch_threads_are_set_in_each_task(cluster, setup, tmp_path):
    specs, data = setup
    inner = specs[0].load("cpu")
    log = tmp_path / "threads"
    jobs = [Job(InMemoryModel(LoadedModel(f"probe{i}", Probe(inner.module, log), inner.dataset, None,
                                          {"source": "test"})), data, {}, [{**ATTACK, "steps": 1}], "cpu")
            for i in range(2)]
    with Store(tmp_path / "t.db") as store:
        RayExecutor(torch_threads=2).run(jobs, store, quiet=True)
        assert all(r["status"] == "ok" for r in store.rows()) and len(store) == 4
    # Ray starts workers with OMP_NUM_THREADS=1, so 2 can only come from the executor's setting
    assert log.read_text().split() == ["2", "2"]


def test_gpus_per_task_follow_the_cluster(cluster):
    assert RayExecutor()._resources() == (0, 1)  # this cluster has no GPU: CPU tasks
    assert RayExecutor(num_gpus_per_task=0, num_cpus_per_task=2)._resources() == (0, 2)
    with pytest.warns(RuntimeWarning, match="no node of the Ray cluster has 1 GPU"):
        assert RayExecutor(num_gpus_per_task=1)._resources() == (1, 1)
    with pytest.warns(RuntimeWarning, match="3 CPU"):
        RayExecutor(num_cpus_per_task=3)._resources()
