"""fp.score on the real shared zoo and CIFAR-10: values checked independently, crash-safe reruns, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flatplug.scoring import DatasetSpec, ModelSpec, score
from flatplug.sources import ZooSource, load_imagefolder
from flatplug.store import Store, StoreError
from conftest import plain_pgd, shared_path

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MODELS = ["sdp_cnn_a_adv", "marabou_small", "oval_base", "wong_small_8px", "eran_conv_small_pgd", "resnet2b"]


@pytest.fixture(scope="module")
def zoo():
    return shared_path("models", "zoo.json")


@pytest.fixture(scope="module")
def cifar():
    return shared_path("data", "cifar10", "test.tar.gz")


def test_scores_six_real_models_and_robust_accuracy_matches_plain_pgd(tmp_path, zoo, cifar):
    eps, steps = 2 / 255, 10
    specs = [ModelSpec.of("zoo", name, manifest=str(zoo)) for name in CIFAR_MODELS]
    frame = score(
        specs, DatasetSpec("imagefolder", str(cifar), n=200),
        measures={"relative_flatness": {}, "hessian_eigenvalues": {"k": 1, "max_iter": 20, "tol": 1e-2},
                  "local_flatness": {"steps": 3}},
        attack={"name": "pgd", "eps": eps, "steps": steps, "step_size": 2.5 * eps / steps, "random_start": False},
        store=tmp_path / "r.db", device="cpu", quiet=True,
    )
    assert (frame["status"] == "ok").all(), frame[frame["status"] != "ok"]["error"].tolist()
    assert len(frame) == 6 * 5
    x, y = load_imagefolder(cifar, n=200)
    source = ZooSource(zoo)
    for name in CIFAR_MODELS:
        model = source.load(name).module
        rows = frame[frame["model"] == name].set_index("name")
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        adv = plain_pgd(model, x, y, eps, steps, 2.5 * eps / steps)
        with torch.no_grad():
            robust = float((model(adv).argmax(1) == y).float().mean())
        assert rows.loc["clean", "value"] == pytest.approx(clean, abs=1e-6)
        assert rows.loc["pgd", "value"] == pytest.approx(robust, abs=1.5 / 200), name  # float-order noise only
        assert rows.loc["pgd", "value"] <= rows.loc["clean", "value"]
        for measure in ("relative_flatness", "hessian_eigenvalues", "local_flatness"):
            assert rows.loc[measure, "value"] > 0
    # a rerun does no work: every row is already there
    with Store(tmp_path / "r.db") as store:
        created = sorted(r["created"] for r in store.rows())
    score(specs[:2], DatasetSpec("imagefolder", str(cifar), n=200),
          measures={"relative_flatness": {}, "hessian_eigenvalues": {"k": 1, "max_iter": 20, "tol": 1e-2},
                    "local_flatness": {"steps": 3}},
          attack={"name": "pgd", "eps": eps, "steps": steps, "step_size": 2.5 * eps / steps, "random_start": False},
          store=tmp_path / "r.db", device="cpu", quiet=True)
    with Store(tmp_path / "r.db") as store:
        assert sorted(r["created"] for r in store.rows()) == created


def _count(db):
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_run_loses_nothing_committed_and_rerun_completes(tmp_path, zoo, cifar):
    db = tmp_path / "kill.db"
    models = "sdp_cnn_a_adv,marabou_small,oval_base,resnet2b"
    cmd = [sys.executable, "-m", "flatplug", "score", "--source", "zoo", "--manifest", str(zoo), "--models", models,
           "--dataset", "imagefolder", "--data", str(cifar), "--n", "64", "--eps", "2/255", "--steps", "5",
           "--measures", "relative_flatness,hessian_trace:probes=20:tol=0", "--store", str(db), "--no-report",
           "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _count(db) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(db) as store:
        before = {(r["model"], r["kind"], r["name"]): (r["value"], r["created"]) for r in store.rows()}
    assert 5 <= len(before) < 16, "the run should have been killed mid-way"
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Store(db) as store:
        rows = store.rows()
    keys = [(r["model"], r["kind"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys)) == 16  # 4 models x (clean, pgd, 2 measures), no duplicates
    after = {(r["model"], r["kind"], r["name"]): (r["value"], r["created"]) for r in rows}
    for key, value in before.items():
        assert after[key] == value  # committed rows were kept, not recomputed
    assert all(r["status"] == "ok" for r in rows)


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, zoo, cifar):
    folder = tmp_path / "zoo"
    folder.mkdir()
    manifest = json.loads(Path(zoo).read_text())
    keep = {k: manifest[k] for k in ("marabou_small", "madry_cnn_tiny")}
    keep["marabou_small"]["file"] = str(Path(zoo).parent / manifest["marabou_small"]["file"])
    keep["madry_cnn_tiny"]["file"] = str(Path(zoo).parent / manifest["madry_cnn_tiny"]["file"])  # an MNIST model
    keep["ghost"] = dict(manifest["marabou_small"], file="ghost.pt")  # missing checkpoint
    keep["broken"] = dict(manifest["marabou_small"], file="broken.pt")
    (folder / "broken.pt").write_bytes(b"not a checkpoint at all")
    (folder / "zoo.json").write_text(json.dumps(keep))
    specs = [ModelSpec.of("zoo", n, manifest=str(folder / "zoo.json"))
             for n in ("ghost", "marabou_small", "broken", "madry_cnn_tiny", "marabu_small")]
    frame = score(specs, DatasetSpec("imagefolder", str(cifar), n=32), measures=["relative_flatness"],
                  attack={"name": "pgd", "eps": 2 / 255, "steps": 2}, store=tmp_path / "f.db", quiet=True)
    errors = {r["model"]: r["error"] for _, r in frame[frame["status"] == "failed"].iterrows()}
    assert "ghost.pt" in errors["ghost"]
    assert "broken" in errors["broken"] and "broken.pt" in errors["broken"]
    assert "[1, 28, 28]" in errors["madry_cnn_tiny"] and "[3, 32, 32]" in errors["madry_cnn_tiny"]
    assert "Did you mean 'marabou_small'" in errors["marabu_small"]
    ok = frame[(frame["model"] == "marabou_small") & (frame["status"] == "ok")]
    assert len(ok) == 3


def test_bad_stores_and_dataset_sizes(tmp_path, cifar, monkeypatch):
    ro = tmp_path / "ro.db"
    Store(ro).close()
    os.chmod(ro, 0o444)
    if os.access(ro, os.W_OK):  # root ignores file modes: let the OS answer as it does for everyone else
        real_access = os.access
        monkeypatch.setattr("flatplug.store.os.access",
                            lambda p, mode: False if (Path(p) == ro and mode == os.W_OK) else real_access(p, mode))
    with pytest.raises(StoreError, match="read-only"):
        Store(ro)


def test_newer_schema_and_foreign_files_are_refused(tmp_path):
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a flatplug results database"):
        Store(junk)


def test_n_larger_than_dataset_fails_before_any_work(tmp_path, zoo):
    mnist = shared_path("data", "mnist")
    with pytest.raises(ValueError, match="asked for 20000 samples but the dataset has only 10000"):
        score([ModelSpec.of("zoo", "madry_cnn_tiny", manifest=str(zoo))], DatasetSpec("mnist", str(mnist), n=20000),
              measures=["relative_flatness"], store=tmp_path / "n.db", quiet=True)
    assert not (tmp_path / "n.db").exists() or _count(tmp_path / "n.db") == 0


def test_cli_unknown_source_and_export(tmp_path, zoo):
    out = subprocess.run([sys.executable, "-m", "flatplug", "score", "--source", "zooo", "--no-report"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "Did you mean 'zoo'" in out.stderr
    db = tmp_path / "e.db"
    with Store(db) as store:
        store.put(model="m", source="zoo", dataset="d", kind="measure", name="relative_flatness", params={"a": 1},
                  value=1.5, details={"curve": [1, 2]})
    subprocess.run([sys.executable, "-m", "flatplug", "export", "--store", str(db), "--out", str(tmp_path / "e.csv")],
                   check=True, capture_output=True)
    import pandas as pd

    frame = pd.read_csv(tmp_path / "e.csv")
    assert frame.loc[0, "value"] == 1.5 and json.loads(frame.loc[0, "details"]) == {"curve": [1, 2]}
    pytest.importorskip("pyarrow")
    subprocess.run([sys.executable, "-m", "flatplug", "export", "--store", str(db), "--out",
                    str(tmp_path / "e.parquet")], check=True, capture_output=True)
    assert pd.read_parquet(tmp_path / "e.parquet").loc[0, "name"] == "relative_flatness"


def test_read_only_store_can_be_reported(tmp_path):
    db = tmp_path / "ro.db"
    with Store(db) as store:
        store.put(model="m", source="s", dataset="d", kind="accuracy", name="clean", value=0.5)
    os.chmod(db, 0o444)
    with Store(db, readonly=True) as store:
        assert store.rows()[0]["value"] == 0.5
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nothing.db", readonly=True)


def test_measure_rows_equal_direct_measure_calls(tmp_path, zoo, cifar):
    """Guards against scoring handing measures other data, batches, settings or model state than a user's
    own ``fp.measure`` call would (issue 17: zoo-run measure rows were only checked to be positive)."""
    import flatplug as fp

    measures = {"relative_flatness": {}, "hessian_trace": {"probes": 4, "tol": 0}, "local_flatness": {"steps": 2},
                "sharpness": {"rho": 0.05, "steps": 2}}
    attack = {"name": "pgd", "eps": 2 / 255, "steps": 1, "random_start": False}
    data = DatasetSpec("imagefolder", str(cifar), n=16)
    specs = [ModelSpec.of("zoo", "oval_base", manifest=str(zoo))]
    frame = score(specs, data, measures=measures, attack=attack, store=tmp_path / "m.db", device="cpu",
                  batch_size=8, quiet=True)
    assert (frame["status"] == "ok").all(), frame["error"].tolist()
    x, y = load_imagefolder(cifar, n=16)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 16, 8)]
    source = ZooSource(zoo)
    checked = 0
    for _, row in frame[frame["kind"] == "measure"].iterrows():
        params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
        for key, value in measures[row["name"]].items():
            assert params[key] == value  # the caller's settings reach the measure
        model = source.load(row["model"]).module
        direct = fp.measure(row["name"], model, batches, **params)
        assert row["value"] == pytest.approx(direct.value, rel=1e-6, abs=1e-9), (row["model"], row["name"])
        checked += 1
    assert checked == len(measures)
