"""The leaderboard pipeline end to end on two real MNIST models with a small n, against independent
computations: clean accuracy by plain torch on the raw IDX bytes, the sort order, the standard errors,
the published difference, the masking rule, the written files, and a resumed run that computes nothing."""

from __future__ import annotations

import gzip
import json
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

from conftest import shared_path

MODELS = ["eran_mnist_6x100_nat", "madry_cnn_tiny"]
N = 10


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from flatplug.leaderboard import leaderboard

    shared = shared_path("models", "zoo.json").parents[1]
    tmp = tmp_path_factory.mktemp("leaderboard")
    paths = leaderboard(shared=shared, models=MODELS, n=N, store=tmp / "store.db", markdown=tmp / "lb.md",
                        out=tmp / "lb", device="cpu", n_boot=50, quiet=True, log=lambda s: None)
    return shared, tmp, paths


def _rows(db):
    with sqlite3.connect(db) as c:
        return c.execute("SELECT model, kind, name, params, created FROM results ORDER BY created").fetchall()


def _plain_mnist_mlp(shared):
    """eran_mnist_6x100_nat rebuilt by hand: normalise, flatten, six Linear layers with ReLU between."""
    entry = json.loads((shared / "models" / "zoo.json").read_text())["eran_mnist_6x100_nat"]
    sizes = [layer["linear"] for layer in entry["layers"] if "linear" in layer]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (d_in, d_out) in enumerate(sizes):
        layers += [nn.Linear(d_in, d_out)] + ([nn.ReLU()] if i < len(sizes) - 1 else [])
    net = nn.Sequential(*layers)
    state = torch.load(shared / "models" / entry["file"], map_location="cpu", weights_only=True)
    linear_keys = sorted({k.split(".")[0] for k in state}, key=int)
    mine = [m for m in net if isinstance(m, nn.Linear)]
    for module, key in zip(mine, linear_keys):
        module.weight.data = state[f"{key}.weight"]
        module.bias.data = state[f"{key}.bias"]
    return net.eval(), entry["mean"][0], entry["std"][0]


def test_clean_accuracy_matches_plain_torch_on_raw_idx(board):
    """Guards against the pipeline scoring other images than it says, or a wrong model wiring: the clean
    accuracy of eran_mnist_6x100_nat equals a hand-built MLP on the raw IDX bytes of the same test images."""
    from flatplug.sources.mnist import load_mnist

    shared, tmp, paths = board
    with gzip.open(shared / "data" / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(shared / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    idx = load_mnist(shared / "data" / "mnist", n=N, seed=0).indices.numpy()
    assert sorted(np.bincount(labels[idx], minlength=10)) == [1] * 10  # class-balanced
    net, mean, std = _plain_mnist_mlp(shared)
    x = (torch.from_numpy(images[idx].astype(np.float32)) / 255.0 - mean) / std
    with torch.no_grad():
        expected = (net(x).argmax(1).numpy() == labels[idx]).mean()
    import pandas as pd

    results = pd.read_csv(paths["results_csv"])
    got = results[results.model == "eran_mnist_6x100_nat"]["clean"]
    assert len(got) == 2 and np.allclose(got, expected, atol=1e-6)


def test_table_order_errors_published_difference_and_masking(board):
    """Rows are ranked by AutoAttack accuracy within each threat model; SE is sqrt(p(1-p)/n); the published
    difference is ours minus ERAN's 960/1000; AutoAttack never exceeds clean accuracy; the masking flag
    follows its rule; the model with nothing retrieved says so."""
    import pandas as pd

    from flatplug.leaderboard.table import LEADERBOARD_MASKING_MARGIN

    shared, tmp, paths = board
    r = pd.read_csv(paths["results_csv"])
    assert set(r.threat_model) == {"Linf 0.1", "Linf 0.3"} and len(r) == 4 and (r.n == N).all()
    for _, sub in r.groupby("threat_model"):
        aa = sub.sort_values("rank")["autoattack"].to_numpy()
        assert (np.diff(aa) <= 1e-12).all() and list(sub.sort_values("rank")["rank"]) == [1, 2]
    for col in ("clean", "autoattack", "pgd"):
        assert np.allclose(r[f"{col}_se"], np.sqrt(r[col] * (1 - r[col]) / N))
    assert (r.autoattack <= r.clean + 1e-9).all()
    eran = r[r.model == "eran_mnist_6x100_nat"]
    assert np.allclose(eran.clean_minus_published, eran.clean - 0.96)
    assert (eran.published_clean_value == 0.96).all() and eran.published_robust_kind.isna().all()
    gap = r.pgd - r.autoattack
    se = np.sqrt(r.pgd * (1 - r.pgd) / N + r.autoattack * (1 - r.autoattack) / N)
    assert list(r.masking) == list((gap > np.maximum(LEADERBOARD_MASKING_MARGIN, 2 * se)))
    text = paths["markdown"].read_text()
    assert "## MNIST test set, Linf 0.1" in text and "## MNIST test set, Linf 0.3" in text
    assert "not retrieved" in text  # madry_cnn_tiny
    assert "robust figures only at eps 0.026" in text  # ERAN evaluated its 6x100 at 0.026
    assert f"{100 * (eran.clean.iloc[0] - 0.96):+.1f} pp" in text
    assert "Wall time of the run" in text and " cores" in text and "**AA-lite**" in text


def test_measures_reports_and_files(board):
    """Every measure column is filled for both models, the per-threat-model reports and the Parquet
    copies exist, the correlations explain why two models cannot be ranked, and run.json records the run."""
    import pandas as pd

    shared, tmp, paths = board
    r = pd.read_parquet(paths["results_parquet"])
    for col in ("relative_flatness_mean", "relative_flatness_median", "hessian_max_eigenvalue", "hessian_trace",
                "local_flatness", "sharpness_average", "sharpness_worst"):
        assert r[col].notna().all(), col
        assert (r[f"seconds_{col}"] >= 0).all() if col != "relative_flatness_median" else True
    import flatplug as fp
    from flatplug.leaderboard import default_plan

    plan = default_plan(shared, n=N, models=MODELS, device="cpu")
    x, y = plan.dataset("mnist").load()
    kappa = fp.measure("relative_flatness", plan.model_spec("madry_cnn_tiny").load("cpu").module, (x, y)).per_sample
    tiny = r[r.model == "madry_cnn_tiny"]  # the median is of the images whose mean the store holds
    assert np.allclose(tiny.relative_flatness_mean, float(kappa.mean()), rtol=1e-5)
    assert np.allclose(tiny.relative_flatness_median, float(np.median(kappa.numpy())), rtol=1e-5)
    c = pd.read_parquet(paths["correlations_parquet"])
    assert (c.n == 2).all() and c.note.str.contains("at least 3").all()
    for slug in ("mnist-linf-0.1", "mnist-linf-0.3"):
        assert (tmp / "lb" / slug / "index.html").is_file()
    assert "partial Spearman" in paths["html"].read_text()
    run = json.loads(paths["run"].read_text())
    assert run["n"] == {"mnist": N} and run["wall_seconds"] > 0 and run["machine"]["cores"] >= 1


def test_rerun_resumes_from_the_store(board):
    """A second run with the same store computes nothing: the same rows, none rewritten, and the rows it
    returns are the first run's."""
    from flatplug.leaderboard import default_plan, run_plan

    shared, tmp, paths = board
    before = _rows(tmp / "store.db")
    plan = default_plan(shared, n=N, models=MODELS, device="cpu")
    again = run_plan(plan, store=str(tmp / "store.db"), device="cpu", quiet=True, log=lambda s: None)
    assert _rows(tmp / "store.db") == before
    assert len(again.frame) == len(before)


def test_standard_autoattack_column(tmp_path):
    """The GPU's AutoAttack (torchattacks standard) goes through the same table code: its column is the
    stored autoattack row, here on a naturally trained MLP at eps 0.3 that it breaks completely."""
    from flatplug.leaderboard import Plan, ThreatModel, build_table, load_published, run_plan

    shared = shared_path("models", "zoo.json").parents[1]
    plan = Plan(shared=shared, n={"mnist": N}, models={"mnist": ["eran_mnist_6x100_nat"]},
                threat_models=(ThreatModel("mnist", "linf", "0.3"),), aa="standard", robust_sharpness=False)
    result = run_plan(plan, store=str(tmp_path / "s.db"), device="cpu", quiet=True, log=lambda s: None)
    rows = result.frame[(result.frame.kind == "attack") & (result.frame.name == "autoattack")]
    assert len(rows) == 1 and json.loads(rows.params.iloc[0])["version"] == "standard"
    table = build_table(plan, result.frame, result.medians, load_published(),
                        json.loads((shared / "models" / "zoo.json").read_text()))
    assert table.autoattack.iloc[0] == pytest.approx(rows.value.iloc[0]) == 0.0
    assert table.autoattack_parts.iloc[0].startswith("autoattack ")


def test_cli_refuses_bad_input(capsys):
    """Unknown models and a bad --n are clear errors with exit code 2, before any scoring."""
    from flatplug.cli import main

    shared = shared_path("models", "zoo.json").parents[1]
    assert main(["leaderboard", "--shared", str(shared), "--models", "nosuch_model", "--n", "20"]) == 2
    assert "nosuch_model" in capsys.readouterr().err
    assert main(["leaderboard", "--shared", str(shared), "--n", "lots"]) == 2
    assert "--n" in capsys.readouterr().err


def test_many_missing_checkpoints_are_summarised_as_in_flatplug_score(tmp_path):
    """Guards against the leaderboard listing a whole missing zoo in full, unlike flatplug score."""
    from flatplug.leaderboard.plan import _check_checkpoints

    zoo = shared_path("models", "zoo.json")
    entries = json.loads(zoo.read_text())
    names = sorted(entries)[:7]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "zoo.json").write_text(json.dumps({n: dict(entries[n], file=f"gone_{n}.pt") for n in names}))
    with pytest.raises(FileNotFoundError) as info:
        _check_checkpoints(tmp_path, names)
    text = str(info.value)
    assert text.startswith("7 of 7 models have no checkpoint; nothing was scored: ")
    assert f"gone_{names[4]}.pt" in text and f"gone_{names[5]}.pt" not in text
    assert text.endswith(f" | and the same for {names[5]}, {names[6]}")


def test_cli_refuses_a_missing_checkpoint_before_any_scoring(tmp_path, capsys):
    """Guards against the leaderboard scoring the models it has and only then failing on a missing file."""
    import json

    from flatplug.cli import main

    zoo = shared_path("models", "zoo.json")
    shared = tmp_path / "shared"
    (shared / "models").mkdir(parents=True)
    (shared / "data").symlink_to(zoo.parents[1] / "data")
    entries = json.loads(zoo.read_text())
    local = {name: dict(entry, file=str(zoo.parent / entry["file"])) for name, entry in entries.items()}
    local["oval_base"]["file"] = "gone.pt"
    (shared / "models" / "zoo.json").write_text(json.dumps(local))
    store = tmp_path / "board.db"
    code = main(["leaderboard", "--shared", str(shared), "--models", "marabou_small,oval_base", "--n", "20",
                 "--store", str(store), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"1 of 2 models have no checkpoint; nothing was scored: checkpoint of model 'oval_base' not found: " \
           f"{shared / 'models' / 'gone.pt'}" in err
    assert not store.exists()
