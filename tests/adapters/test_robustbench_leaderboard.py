"""The leaderboard snapshot shipped with the RobustBench adapter agrees with RobustBench's model_info folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flatplug_robustbench")

from conftest import shared_path  # noqa: E402
from flatplug_robustbench import LeaderboardError, lookup, metadata_from_record, read_model_info, snapshot  # noqa: E402

ADAPTER = Path(__file__).resolve().parents[2] / "adapters" / "robustbench"
SHIPPED = ADAPTER / "flatplug_robustbench" / "leaderboard.json"


def _folder_records(folder: Path) -> dict[tuple[str, str, str], dict]:
    return {(p.parent.parent.name, p.parent.name, p.stem): json.loads(p.read_text(encoding="utf-8"))
            for p in folder.glob("*/*/*.json")}


def test_snapshot_agrees_with_model_info_folder():
    folder = shared_path("robustbench", "model_info")
    records = _folder_records(folder)
    doc = snapshot()
    fields = doc["fields"]
    for needed in ("architecture", "venue", "clean_acc", "autoattack_acc", "corruptions_acc", "external"):
        assert needed in fields
    shipped = {(ds, tm, name): rec for ds, threats in doc["models"].items()
               for tm, names in threats.items() for name, rec in names.items()}
    assert set(shipped) == set(records)
    assert len(records) > 200  # the whole leaderboard, not a sample
    for key, record in records.items():
        assert shipped[key] == {k: record[k] for k in fields if k in record}, key
    # every Linf entry carries its reported clean and AutoAttack accuracy
    for (ds, tm, name), rec in shipped.items():
        if tm == "Linf":
            float(rec["clean_acc"]), float(rec["autoattack_acc"])


def test_generator_script_reproduces_shipped_file(tmp_path):
    folder = shared_path("robustbench", "model_info")
    out = tmp_path / "leaderboard.json"
    result = subprocess.run([sys.executable, str(ADAPTER / "scripts" / "make_leaderboard_snapshot.py"), str(folder),
                             "--date", snapshot()["snapshot_date"], "--out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == SHIPPED.read_bytes()


def test_lookup_reads_folder_records_verbatim():
    folder = shared_path("robustbench", "model_info")
    path = folder / "imagenet" / "Linf" / "Standard_R50.json"
    record, where = lookup("imagenet", "Linf", "Standard_R50", folder)
    assert record == json.loads(path.read_text()) and where == str(path)
    assert lookup("cifar10", "Linf", "NoSuchModel2099", folder)[0] is None
    assert lookup("cifar10", "Linf", "NoSuchModel2099")[0] is None


def test_metadata_fractions_and_missing_values():
    meta = metadata_from_record({"clean_acc": "94.78", "autoattack_acc": "0.0", "architecture": "WRN-28-10"}, "Linf", "x")
    assert meta["reported_clean_accuracy"] == pytest.approx(0.9478)
    assert meta["reported_robust_accuracy"] == 0.0
    meta = metadata_from_record({"clean_acc": "", "corruptions_acc": None}, "corruptions", "x")
    assert meta["reported_clean_accuracy"] is None and meta["reported_robust_accuracy"] is None
    assert metadata_from_record(None, "Linf", "where")["leaderboard"] is None


def test_read_model_info_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_info"):
        read_model_info(tmp_path / "absent")
    with pytest.raises(LeaderboardError, match="no <dataset>/<threat_model>/<name>.json"):
        read_model_info(tmp_path)
    bad = tmp_path / "cifar10" / "Linf"
    bad.mkdir(parents=True)
    (bad / "Broken.json").write_text("{not json")
    with pytest.raises(LeaderboardError, match="Broken.json"):
        read_model_info(tmp_path)
    (bad / "Broken.json").write_text("[1, 2]")
    with pytest.raises(LeaderboardError, match="JSON object"):
        read_model_info(tmp_path)
