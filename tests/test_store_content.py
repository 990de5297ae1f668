"""The content-keyed store (issue 11 section 1): rows keyed by what they were computed from.

Oracles: values computed here with plain torch on the data and weights the test itself built
(real CIFAR-10 images re-packed into new archives, a real zoo checkpoint with changed weights),
``hashlib`` on the files' bytes, SQLite read directly, and the old 0.1.0 schema written by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

import flatplug as fp
from conftest import shared_path
from flatplug.errors import StoreError
from flatplug.report import build_report, summary_table
from flatplug.scoring import DatasetSpec, ModelSpec
from flatplug.sources import ZooSource, load_imagefolder
from flatplug.sources.fingerprint import file_sha256
from flatplug.store import LegacyStoreWarning, Store

ATTACK = {"name": "pgd", "eps": 2 / 255, "steps": 2, "random_start": False}
MODEL = "marabou_small"


def _real_members(per_class: int, skip: int) -> list[tuple[str, bytes]]:
    """``per_class`` real CIFAR-10 test JPEGs of every class, after skipping ``skip`` of each."""
    counts: dict[str, int] = {}
    out = []
    with tarfile.open(shared_path("data", "cifar10", "test.tar.gz")) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3:
                continue
            seen = counts.get(parts[1], 0)
            counts[parts[1]] = seen + 1
            if skip <= seen < skip + per_class:
                out.append((m.name, tf.extractfile(m).read()))
    return out


def _archive(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _clean_accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _score(spec_or_model, data, store, **kw):
    return fp.score([spec_or_model], data, measures=["relative_flatness"], attack=ATTACK, store=store,
                    device="cpu", quiet=True, **kw)


def test_two_same_named_archives_with_other_images_are_scored_apart(tmp_path):
    """Guards against rows keyed by names only: a second test.tar.gz with other images returned the first's
    numbers (0.4375 for 0.5625 clean accuracy in issue 11); a byte-identical copy elsewhere reuses them."""
    a = _archive(tmp_path / "a" / "test.tar.gz", _real_members(4, 0))
    b = _archive(tmp_path / "b" / "test.tar.gz", _real_members(4, 4))
    c = tmp_path / "c" / "test.tar.gz"
    c.parent.mkdir()
    shutil.copyfile(a, c)
    zoo = shared_path("models", "zoo.json")
    spec = ModelSpec.of("zoo", MODEL, manifest=str(zoo))
    db = tmp_path / "r.db"
    first = _score(spec, DatasetSpec("imagefolder", str(a), n=40), db)
    second = _score(spec, DatasetSpec("imagefolder", str(b), n=40), db)
    assert set(first["dataset"]) == set(second["dataset"]) == {"imagefolder[test.tar.gz]:n=40,seed=0"}
    assert first["data_fingerprint"].nunique() == second["data_fingerprint"].nunique() == 1
    assert first["data_fingerprint"][0] != second["data_fingerprint"][0]
    model = ZooSource(zoo).load(MODEL).module
    for frame, path in ((first, a), (second, b)):
        x, y = load_imagefolder(path, n=40)
        clean = frame.set_index("name").loc["clean", "value"]
        assert clean == pytest.approx(_clean_accuracy(model, x, y), abs=1e-9)
    assert first.set_index("name").loc["clean", "value"] != second.set_index("name").loc["clean", "value"]
    with Store(db) as store:
        assert len(store) == 6  # both runs kept: clean, pgd, relative flatness each
        created = sorted(r["created"] for r in store.rows())
    third = _score(spec, DatasetSpec("imagefolder", str(c), n=40), db)  # same bytes, other folder: reused
    with Store(db) as store:
        assert sorted(r["created"] for r in store.rows()) == created
    assert list(third["data_fingerprint"].unique()) == [first["data_fingerprint"][0]]
    # export and report tell the two apart
    out = tmp_path / "e.csv"
    from flatplug.cli import main

    assert main(["export", "--store", str(db), "--out", str(out)]) == 0
    exported = pd.read_csv(out)
    assert {"model_fingerprint", "data_fingerprint", "impl_version"} <= set(exported.columns)
    assert exported["data_fingerprint"].nunique() == 2
    page = build_report(db, tmp_path / "rep", n_boot=10).read_text()
    for fingerprint in exported["data_fingerprint"].unique():
        assert f"@data:{fingerprint[:12]}" in page
    assert "<dt>data</dt><dd>not recorded" not in page and "CIFAR-10 test set" in page


def test_a_checkpoint_changed_under_the_same_name_is_scored_afresh(tmp_path):
    """Guards against a retrained checkpoint saved under the same model name getting the first
    checkpoint's numbers back (issue 11: relative flatness 532.5 instead of 859.6)."""
    zoo = shared_path("models", "zoo.json")
    entry = json.loads(zoo.read_text())[MODEL]
    folder = tmp_path / "zoo"
    folder.mkdir()
    shutil.copyfile(zoo.parent / entry["file"], folder / "m.pt")
    (folder / "zoo.json").write_text(json.dumps({MODEL: {**entry, "file": "m.pt"}}))
    spec = ModelSpec.of("zoo", MODEL, manifest=str(folder / "zoo.json"))
    data = DatasetSpec("imagefolder", str(shared_path("data", "cifar10", "test.tar.gz")), n=40)
    db = tmp_path / "r.db"
    old = _score(spec, data, db)
    state = torch.load(folder / "m.pt", weights_only=True)
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = state[last] * 3.0  # same architecture, other weights: other flatness, same name
    torch.save(state, folder / "m.pt")
    assert file_sha256(folder / "m.pt") == hashlib.sha256((folder / "m.pt").read_bytes()).hexdigest()
    new = _score(spec, data, db)
    assert old["model_fingerprint"][0] != new["model_fingerprint"][0]
    x, y = data.load()
    changed = ZooSource(folder / "zoo.json").load(MODEL).module
    rf = fp.measures.relative_flatness(changed, (x, y)).value
    assert new.set_index("name").loc["relative_flatness", "value"] == pytest.approx(rf, rel=1e-5)
    assert old.set_index("name").loc["relative_flatness", "value"] != pytest.approx(rf, rel=1e-3)
    with Store(db) as store:
        assert len(store) == 6
    # the tables show the newest weights; the older rows are kept and listed as superseded
    table = summary_table(db)
    assert list(table["model"]) == [MODEL]
    assert table.loc[0, "relative_flatness"] == pytest.approx(rf, rel=1e-5)
    both = summary_table(db, superseded=True)
    assert len(both) == 2 and f"{MODEL} @weights:{old['model_fingerprint'][0][:12]}" in set(both["model"])
    page = build_report(db, tmp_path / "rep", n_boot=10).read_text()
    superseded = page.split('id="superseded"')[1].split('id="provenance"')[0]
    assert old["model_fingerprint"][0][:12] in superseded
    # --rerun / rerun=True computes again even though everything is stored
    with Store(db) as store:
        before = {r["created"] for r in store.rows() if r["model_fingerprint"] == new["model_fingerprint"][0]}
    again = _score(spec, data, db, rerun=True)
    assert set(again["created"]).isdisjoint(before) and len(again) == 3
    assert again.set_index("name").loc["clean", "value"] == new.set_index("name").loc["clean", "value"]


_V1_SCHEMA = """CREATE TABLE results (model TEXT NOT NULL, source TEXT NOT NULL, dataset TEXT NOT NULL,
    kind TEXT NOT NULL, name TEXT NOT NULL, params TEXT NOT NULL, value REAL, details TEXT NOT NULL DEFAULT '{}',
    seconds REAL, device TEXT, versions TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL DEFAULT 'ok', error TEXT,
    created REAL NOT NULL, PRIMARY KEY (model, source, dataset, kind, name, params))"""


def _v1_store(path: Path) -> None:
    """A store as flatplug 0.1.0 wrote it (its schema, copied from the 0.1.0 source)."""
    with sqlite3.connect(path) as conn:
        conn.execute(_V1_SCHEMA)
        conn.execute("PRAGMA user_version=1")
        conn.execute("INSERT INTO results VALUES ('m', 'zoo', 'cifar10', 'accuracy', 'clean', '{}', 0.5, '{}', 1.0,"
                     " 'cpu', '{\"torch\": \"2.4\"}', 'ok', NULL, 1700000000.0)")
    conn.close()


def test_a_0_1_0_store_is_migrated_with_a_message_and_its_rows_are_legacy(tmp_path):
    """Guards against 0.1.0 stores crashing the new schema, losing rows, or their name-keyed rows being
    reused by a new run (they carry no fingerprints)."""
    db = tmp_path / "old.db"
    _v1_store(db)
    with pytest.warns(LegacyStoreWarning, match="flatplug 0.1.0.*legacy"):
        with Store(db, readonly=True) as store:
            rows = store.rows()
    assert len(rows) == 1 and rows[0]["model_fingerprint"] == "" and rows[0]["value"] == 0.5
    with pytest.warns(LegacyStoreWarning, match="migrated"):
        store = Store(db)
    with store:
        assert (tmp_path / "old.db.v1.bak").is_file()
        rows = store.rows()
        assert [(r["model"], r["value"], r["model_fingerprint"], r["impl_version"]) for r in rows] == [
            ("m", 0.5, "", "")]
        assert not store.has(model="m", source="zoo", dataset="cifar10", kind="accuracy", name="clean",
                             model_fingerprint="abc", data_fingerprint="def", impl_version="flatplug:1")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    with sqlite3.connect(tmp_path / "old.db.v1.bak") as conn:  # the backup is the untouched 0.1.0 file
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    page = build_report(db, tmp_path / "rep", n_boot=10).read_text()
    assert "flatplug 0.1.0" in page  # the provenance says why the data are not recorded


def test_sqlite_files_of_other_programs_are_refused_and_left_alone(tmp_path):
    """Guards against a foreign SQLite database being given a results table (issue 11)."""
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="not a flatplug results store.*users"):
        Store(other)
    with sqlite3.connect(other) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert tables == ["users"] and conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()
    tagged = tmp_path / "tagged.db"
    with sqlite3.connect(tagged) as conn:
        conn.execute("PRAGMA application_id=1234")
    conn.close()
    with pytest.raises(StoreError, match="another application"):
        Store(tagged)
    with pytest.raises(StoreError, match="another application"):
        Store(tagged, readonly=True)


def test_read_only_stores_refuse_writes_even_for_root(tmp_path, monkeypatch):
    """Guards against the read-only refusal going untested where CI runs as root (issue 17): SQLite's
    read-only URI mode refuses writes whoever runs it, and the permission check is exercised by
    making the OS answer 'not writable'."""
    db = tmp_path / "s.db"
    with Store(db) as store:
        store.put(model="m", source="s", dataset="d", kind="accuracy", name="clean", value=0.5)
    with Store(db, readonly=True) as store:
        with pytest.raises(StoreError, match="read-only"):
            store.put(model="m", source="s", dataset="d", kind="accuracy", name="other", value=0.1)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._conn.execute("DELETE FROM results")
    with Store(db) as store:
        assert len(store) == 1
    real_access = os.access
    monkeypatch.setattr("flatplug.store.os.access",
                        lambda p, mode: False if (Path(p) == db and mode == os.W_OK) else real_access(p, mode))
    with pytest.raises(StoreError, match="read-only; pass a writable --store"):
        Store(db)


def test_file_fingerprints_follow_the_file_not_the_cache(tmp_path):
    """Guards against a fingerprint cache keyed too loosely: a file rewritten in place with other bytes
    of the same size must get a new digest (the cache key includes the mtime)."""
    src = shared_path("models", "oval_base.pt")
    copy = tmp_path / "w.pt"
    shutil.copyfile(src, copy)
    digest = file_sha256(copy)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_sha256(copy) == hashlib.sha256(bytes(data)).hexdigest() != digest


def test_a_source_that_cannot_fingerprint_yet_falls_back_to_the_parameters(monkeypatch):
    """Guards against a source's ``fingerprint(name) -> None`` (a checkpoint still to be downloaded)
    becoming the key "None", shared by every such model."""
    zoo = ZooSource(shared_path("models", "zoo.json"))
    monkeypatch.setattr(ZooSource, "fingerprint", lambda self, name: None)
    spec = ModelSpec.of("zoo", MODEL, manifest=str(zoo.path))
    assert spec.fingerprint() is None  # cannot say without loading
    digest = spec.fingerprint(zoo.load(MODEL))
    assert digest not in (None, "None") and len(digest) == 64
    other = ModelSpec.of("zoo", "oval_base", manifest=str(zoo.path)).fingerprint(zoo.load("oval_base"))
    assert other not in (None, "None", digest)


class _Normalised(torch.nn.Module):
    """A network with its normalisation as plain tensor attributes (as some RobustBench architectures
    hold it: neither parameters nor buffers)."""

    def __init__(self, net: torch.nn.Module, mean: float):
        super().__init__()
        self.net, self.mean = net, torch.tensor([mean])

    def forward(self, x):
        return self.net(x - self.mean)


def _digits_net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 32), torch.nn.LeakyReLU(0.01),
                               torch.nn.Linear(32, 10))


def test_in_memory_models_that_compute_differently_are_scored_apart(tmp_path):
    """An in-memory model was fingerprinted by its parameters, buffers and submodule classes only: a
    changed LeakyReLU slope, convolution stride or plain tensor attribute (a normalisation held as
    ``self.mean``) under the same name got the first model's rows back. Each variant's stored relative
    flatness must equal the measure run directly on it."""
    import copy

    from flatplug.sources import load_mnist

    data = load_mnist(shared_path("data", "mnist"), n=64)
    x, y = data.x, data.y
    base = _Normalised(_digits_net(), 0.0)
    slope = copy.deepcopy(base)
    slope.net[2].negative_slope = 0.5
    shifted = copy.deepcopy(base)
    shifted.mean = torch.tensor([0.5])
    db = tmp_path / "r.db"
    values = []
    for module in (base, slope, shifted):
        frame = fp.score([fp.LoadedModel("m", module, "mnist", metadata={"source": "test"})], (x, y),
                         measures=["relative_flatness"], attack=ATTACK, store=db, device="cpu", quiet=True)
        stored = frame.set_index("name").loc["relative_flatness", "value"]
        assert stored == pytest.approx(fp.measures.relative_flatness(module, (x, y)).value, rel=1e-6)
        values.append(stored)
    assert len(set(values)) == 3
    with Store(db) as store:
        assert len({r["model_fingerprint"] for r in store.rows()}) == 3


def test_score_returns_only_this_runs_rows(tmp_path):
    """fp.score returned every stored row of the model and data: rows of other settings (an attack at
    another eps) and measures of an earlier run that this run did not ask for (a failed one made the
    CLI exit 1). The frame now holds exactly the keys this run planned, reused or computed."""
    from flatplug.sources import load_mnist

    data = load_mnist(shared_path("data", "mnist"), n=32)
    model = fp.LoadedModel("m", _digits_net(1), "mnist", metadata={"source": "test"})
    db = tmp_path / "r.db"
    first = fp.score([model], (data.x, data.y), measures={"hessian_eigenvalues": {"k": 1, "max_iter": 2}},
                     attack={**ATTACK, "eps": 2 / 255}, store=db, device="cpu", quiet=True)
    assert set(first["name"]) == {"clean", "pgd", "hessian_eigenvalues"}
    second = fp.score([model], (data.x, data.y), measures=["relative_flatness"], attack={**ATTACK, "eps": 4 / 255},
                      store=db, device="cpu", quiet=True)
    assert sorted(second["name"]) == ["clean", "pgd", "relative_flatness"]
    assert second.set_index("name").loc["pgd", "params"] == json.dumps(
        {"eps": 4 / 255, "random_start": False, "steps": 2}, sort_keys=True, separators=(",", ":"))
    with Store(db) as store:
        assert len(store) == 5  # both runs' rows are kept
    from importlib import metadata

    from flatplug.sources.demo import code_digest

    recorded = second["versions"][0]  # what computed the rows, for tracing them
    assert recorded["torch"] == torch.__version__ and recorded["flatplug_code"] == code_digest()[:16]
    for lib in ("torchattacks", "numpy"):
        assert recorded[lib] == metadata.version(lib)


def test_attack_rows_of_another_precision_are_not_reused(tmp_path):
    """``precision`` changes attack rows (bf16/tf32 autocast on CUDA) but was not in their key: an fp32
    run after a bf16 one got the bf16 row back (its details said so). A reduced precision is now part of
    the attack row's key; fp32 keys are what they were. (tf32 here: on a CPU it computes what fp32 does,
    but is keyed apart all the same; bf16 on a CPU is refused before any work.)"""
    from flatplug.sources import load_mnist

    data = load_mnist(shared_path("data", "mnist"), n=16)
    model = fp.LoadedModel("m", _digits_net(2), "mnist", metadata={"source": "test"})
    db = tmp_path / "r.db"
    rows = {}
    with pytest.raises(ValueError, match="bf16 autocast is for CUDA devices, and this run is on cpu"):
        fp.score([model], (data.x, data.y), measures=[], attack=ATTACK, store=db, device="cpu", precision="bf16")
    assert not db.exists()
    for precision in ("tf32", "fp32", "tf32"):
        frame = fp.score([model], (data.x, data.y), measures=[], attack=ATTACK, store=db, device="cpu",
                         quiet=True, precision=precision)
        rows.setdefault(precision, []).append(frame.set_index("name").loc["pgd"])
    assert rows["fp32"][0]["details"]["precision"] == "fp32" and rows["tf32"][0]["details"]["precision"] == "tf32"
    assert json.loads(rows["fp32"][0]["params"]) == {k: v for k, v in ATTACK.items() if k != "name"}
    assert json.loads(rows["tf32"][0]["params"])["precision"] == "tf32"
    assert rows["tf32"][1]["created"] == rows["tf32"][0]["created"]  # the same precision is reused
    with Store(db) as store:
        assert len([r for r in store.rows() if r["kind"] == "attack"]) == 2


def test_settings_that_are_not_json_are_keyed_by_content(tmp_path):
    """A ``loss_fn`` was keyed by its ``repr``: a class-weighted CrossEntropyLoss prints as the plain one
    and got the plain loss's row back (0.396 for 0.761 in the audit), and a function was keyed by its
    memory address (never reused in another process, and untraceable). Each loss here must get its own
    row, equal to the measure run directly with it, and the key must hold no address."""
    from flatplug.sources import load_mnist

    data = load_mnist(shared_path("data", "mnist"), n=32)
    model = fp.LoadedModel("m", _digits_net(3), "mnist", metadata={"source": "test"})
    db = tmp_path / "r.db"
    weights = torch.linspace(0.2, 3.0, 10)
    losses = [torch.nn.CrossEntropyLoss(reduction="none"), torch.nn.CrossEntropyLoss(reduction="none", weight=weights),
              torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=0.2)]
    values = []
    for loss in losses:
        frame = fp.score([model], (data.x, data.y), measures={"relative_flatness": {"loss_fn": loss}}, attack=ATTACK,
                         store=db, device="cpu", quiet=True)
        row = frame.set_index("name").loc["relative_flatness"]
        assert "0x" not in row["params"]
        assert row["value"] == pytest.approx(fp.measures.relative_flatness(model.module, (data.x, data.y),
                                                                          loss_fn=loss).value, rel=1e-6)
        values.append(row["value"])
    assert len(set(values)) == 3
    again = fp.score([model], (data.x, data.y), measures={"relative_flatness": {"loss_fn": losses[1]}},
                     attack=ATTACK, store=db, device="cpu", quiet=True)
    with Store(db) as store:
        assert len([r for r in store.rows() if r["name"] == "relative_flatness"]) == 3  # reused, not recomputed
    assert again.set_index("name").loc["relative_flatness", "value"] == values[1]


def test_images_rewritten_in_a_folder_are_read_again_in_the_same_process(tmp_path):
    """The per-process data cache was keyed by the path's own size and mtime: rewriting an image inside a
    folder leaves the folder's mtime alone, so a second fp.score in the same process scored the old images
    (and keyed them as the old data). The rows must follow the images on disk."""
    from flatplug.sources.fingerprint import data_fingerprint

    members = _real_members(2, 0)
    folder = tmp_path / "imgs"
    for name, data in members:
        out = folder / Path(name).relative_to(Path(name).parts[0])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    data = DatasetSpec("imagefolder", str(folder), n=20)
    spec = ModelSpec.of("zoo", MODEL, manifest=str(shared_path("models", "zoo.json")))
    db = tmp_path / "r.db"
    first = _score(spec, data, db)
    before = os.stat(folder).st_mtime_ns
    victim = sorted(folder.rglob("*.*"))[0]
    victim.write_bytes(_real_members(1, 5)[0][1])  # another real image under the same name
    assert os.stat(folder).st_mtime_ns == before
    second = _score(spec, data, db)
    x, y = load_imagefolder(folder, n=20)
    assert second["data_fingerprint"][0] == data_fingerprint(x, y) != first["data_fingerprint"][0]


def test_a_load_failure_is_returned_by_its_run_only(tmp_path, monkeypatch):
    """A model that failed to load (here: a transient error of the source) is a failure row of that run,
    and the CLI exits 1 on it. Once it loads, a later run must not return the old failure beside the
    new rows (it made the CLI report a failure for a model that had just been scored)."""
    spec = ModelSpec.of("zoo", MODEL, manifest=str(shared_path("models", "zoo.json")))
    data = DatasetSpec("imagefolder", str(shared_path("data", "cifar10", "test.tar.gz")), n=8)
    db = tmp_path / "r.db"
    real_load = ZooSource.load

    def broken(self, name, device="cpu"):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(ZooSource, "load", broken)
    first = _score(spec, data, db)
    assert list(first["status"]) == ["failed"] and first["name"][0] == "load"
    monkeypatch.setattr(ZooSource, "load", real_load)
    second = _score(spec, data, db)
    assert set(second["status"]) == {"ok"} and sorted(second["name"]) == ["clean", "pgd", "relative_flatness"]
    with Store(db) as store:
        assert any(r["status"] == "failed" for r in store.rows())  # kept in the store, not returned
