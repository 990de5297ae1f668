"""``flatplug score``/``report``/``export`` as a newcomer meets them (issue 11 sections 2 and 4).

Every bad input is refused before any work, with exit code 2, a message naming the fix, and no
store written; a run with a failed model exits 1 with a one-line summary; Ctrl-C exits 130 with
what was saved; help texts say what the options do. The commands run in-process through
``flatplug.cli.main`` (the console script's function), except where a real process is needed
(Ctrl-C, a terminal).
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import shared_path
from flatplug.cli import main
from flatplug.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paths():
    return shared_path("models", "zoo.json"), shared_path("data", "cifar10", "test.tar.gz")


def _zoo_args(paths, store: Path, *extra: str) -> list[str]:
    zoo, cifar = paths
    return ["score", "--manifest", str(zoo), "--models", "marabou_small", "--dataset", "imagefolder", "--data",
            str(cifar), "--n", "16", "--store", str(store), "--no-report", "--quiet", "--device", "cpu", *extra]


BAD_INPUTS = [
    # (what is wrong, extra arguments replacing defaults, the words the message must have)
    ("unknown model, trailing comma ignored", ["--models", "marabou_small,marabu_small,"],
     "unknown model 'marabu_small' (did you mean 'marabou_small'?)"),
    ("--manifest with another source", ["--source", "demo"], "--manifest is an option of --source zoo"),
    ("unknown dataset", ["--dataset", "imagefoldr"], "Did you mean 'imagefolder'?"),
    ("unknown attack", ["--attack", "autoatack"], "Did you mean 'autoattack'?"),
    ("--steps for an attack without steps", ["--attack", "fgsm", "--steps", "5"], "--steps: none of the attacks"),
    ("attack option nobody takes", ["--attack-option", "bogus=1"], "no attack of this run takes 'bogus'"),
    ("bad AutoAttack version", ["--attack", "autoattack", "--attack-option", "version=bogus"],
     "version: expected one of standard, plus, rand, custom"),
    ("norm an attack does not have", ["--attack", "fgsm", "--norm", "L2"], "fixed-norm attack (linf)"),
    ("eps as a pixel count", ["--eps", "8"], "8/255"),
    ("unknown measure", ["--measures", "relative_flatnes"], "Did you mean 'relative_flatness'?"),
    ("measure parameter it does not take", ["--measures", "hessian_eigenvalues:kk=3"], "Did you mean 'k'?"),
    ("bad measure value", ["--measures", "hessian_trace:min_probes=1"],
     "measure 'hessian_trace': min_probes: expected an integer >= 2, got 1"),
    ("measure values that contradict", ["--measures", "hessian_eigenvalues:k=5:max_iter=3"],
     "max_iter: must be at least k=5"),
    ("no images", ["--n", "0"], "--n: expected a positive number"),
    ("missing archive", ["--data", "nowhere/test.tar.gz"], "no such folder or archive"),
    ("too many images (CLI words)", ["--n", "20000"], "pass --n 10000 or less"),
    ("bf16 on the CPU (failed only at the first attack)", ["--precision", "bf16"],
     "bf16 autocast is for CUDA devices, and this run is on cpu"),
]


def _replace(args: list[str], extra: list[str]) -> list[str]:
    out = list(args)
    i = 0
    while i < len(extra):
        flag = extra[i]
        val = extra[i + 1] if i + 1 < len(extra) and not extra[i + 1].startswith("--") else None
        if flag in out and flag not in ("--attack", "--attack-option"):
            j = out.index(flag)
            if val is not None:
                out[j + 1] = val
        else:
            out += [flag] + ([val] if val is not None else [])
        i += 2 if val is not None else 1
    return out


@pytest.mark.parametrize("what, extra, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_exits_2_before_any_work(what, extra, words, paths, tmp_path, capsys):
    """Guards against a bad name or setting being found only after models were scored (or never), and
    against a store being written for a run that was refused (issue 11 section 2)."""
    store = tmp_path / "r.db"
    code = main(_replace(_zoo_args(paths, store), extra))
    err = capsys.readouterr().err
    assert code == 2, (what, err)
    assert words in err, (what, err)
    assert "Traceback" not in err and not store.exists()


def test_missing_checkpoints_are_refused_before_any_model_is_scored(paths, tmp_path, capsys):
    """Guards against a run scoring the first models and only then finding a later model's checkpoint
    missing: every missing file is named at once, and nothing is written."""
    zoo, _ = paths
    manifest = json.loads(zoo.read_text())
    entries = {name: dict(manifest[name], file=str(zoo.parent / manifest[name]["file"]))
               for name in ("marabou_small", "oval_base", "resnet2b")}
    entries["oval_base"]["file"] = "gone/oval_base.pt"
    entries["resnet2b"]["file"] = "gone/resnet2b.pt"
    local = tmp_path / "zoo.json"
    local.write_text(json.dumps(entries))
    store = tmp_path / "r.db"
    args = _replace(_zoo_args(paths, store), ["--manifest", str(local), "--models", "marabou_small,oval_base,resnet2b"])
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "2 of 3 models cannot be loaded; nothing was scored" in err
    assert f"checkpoint of model 'oval_base' not found: {tmp_path / 'gone' / 'oval_base.pt'}" in err
    assert "checkpoint of model 'resnet2b' not found" in err and "'marabou_small' not found" not in err
    assert not store.exists()
    from flatplug.cli import build_parser
    from flatplug.cli.score import preflight

    remote = args + ["--executor", "ray"]  # a cluster's workers may see files this machine does not
    assert preflight(build_parser(remote).parse_args(remote)).models == ["marabou_small", "oval_base", "resnet2b"]


def test_a_failed_model_exits_1_with_a_summary_and_success_exits_0(paths, tmp_path, capsys):
    """Guards against exit code 0 when a model failed (scripts and CI would take a broken run for a good one)."""
    zoo, _ = paths
    manifest = json.loads(zoo.read_text())
    folder = tmp_path / "zoo"
    folder.mkdir()
    entry = dict(manifest["marabou_small"], file=str(zoo.parent / manifest["marabou_small"]["file"]))
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    (folder / "zoo.json").write_text(json.dumps({"marabou_small": entry, "broken": dict(entry, file="broken.pt")}))
    store = tmp_path / "r.db"
    args = _replace(_zoo_args(paths, store, "--measures", "relative_flatness", "--steps", "2"),
                    ["--manifest", str(folder / "zoo.json"), "--models", "marabou_small,broken"])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "scored 2 models" in err and "1 ok, 1 failed (broken)" in err and "broken.pt" in err
    ok = _replace(args, ["--models", "marabou_small"])
    assert main(ok) == 0
    assert "all ok" in capsys.readouterr().out


def test_ctrl_c_says_what_was_saved_and_exits_130(paths, tmp_path):
    """Guards against Ctrl-C printing a traceback and leaving the user unsure what was kept (issue 11)."""
    store = tmp_path / "r.db"
    args = _replace(_zoo_args(paths, store, "--measures", "hessian_trace:probes=200:tol=0", "--steps", "3"),
                    ["--models", "marabou_small,oval_base,oval_wide,resnet2b", "--n", "32"])
    # a shell's background job inherits an ignored SIGINT; a user's terminal does not: restore the default
    proc = subprocess.Popen([sys.executable, "-m", "flatplug", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] >= 2:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    with Store(store, readonly=True) as db:
        saved = len(db)
    assert f"interrupted: {saved} results saved in {store}; rerun the same command to resume" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["score", "plugins"])
def test_ctrl_c_inside_exec_built_code_still_exits_130_under_python_m(command, tmp_path):
    """Guards against a caught Ctrl-C ending ``python -m flatplug`` by SIGINT (-2), not 130 (a CI failure).

    CPython remembers a KeyboardInterrupt that escaped ``exec`` of a string (dataclasses and
    namedtuple build code that way) and kills a ``-m`` run with SIGINT at exit unless told to forget.
    """
    package = tmp_path / "interrupted_run"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import sys\n"
        "import flatplug.cli.commands, flatplug.cli.score, flatplug.scoring\n"
        "def ctrl_c(*args, **kwargs):\n"
        "    exec('raise KeyboardInterrupt')  # the Ctrl-C lands inside code that exec() runs\n"
        "flatplug.cli.commands._cmd_plugins = ctrl_c\n"
        "flatplug.cli.score.preflight = lambda args: type('Plan', (), dict(untrained=[], models=[], store='s.db', "
        "source='demo', options={}, dataset='digits', measures=[], attacks=[]))()\n"
        "flatplug.scoring.score = ctrl_c\n"
        "from flatplug.cli import main\n"
        f"sys.exit(main([{command!r}]))\n")
    proc = subprocess.run([sys.executable, "-m", "interrupted_run"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr


def test_report_and_export_errors_and_help(tmp_path, capsys):
    """Guards against `report --out FILE` overwriting or crashing, a missing store giving a traceback, and
    options without help (issue 11 section 4)."""
    db = tmp_path / "s.db"
    with Store(db) as store:
        store.put(model="m", source="s", dataset="d", kind="accuracy", name="clean", value=0.5)
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert main(["report", "--store", str(db), "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file, not a folder" in err and existing.read_text() == "mine"
    assert main(["report", "--store", str(tmp_path / "none.db"), "--out", str(tmp_path / "rep")]) == 2
    assert "no results store there" in capsys.readouterr().err
    assert main(["export", "--store", str(db), "--out", str(tmp_path / "x.txt")]) == 2
    assert "expected a .csv or .parquet" in capsys.readouterr().err
    for command in (["report", "--help"], ["export", "--help"], ["score", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(command)
        assert stop.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        if command[0] in ("report", "export"):
            assert "the results store to" in text and "(default flatplug-results.db" in text
        else:
            import flatplug.scoring as scoring

            assert f"(default: {', '.join(scoring.default_measures())};" in text
            assert "--rerun" in text and "--attack-option" in text and "Linf|L2" in text


def test_progress_bars_name_the_model_and_the_measure_on_a_terminal(paths, tmp_path):
    """Guards against progress output that is silent on a terminal or does not say what is running
    (issue 11 section 4; issue 17: progress output when not quiet)."""
    args = [a for a in _zoo_args(paths, tmp_path / "r.db", "--measures", "relative_flatness", "--steps", "1")
            if a != "--quiet"]
    leader, follower = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal 160 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "flatplug", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=follower, text=False)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, shown[-2000:]
    assert "models" in shown and "marabou_small" in shown
    assert "measure relative_flatness" in shown or "attack pgd" in shown, shown[-2000:]


def test_the_first_demo_run_says_it_trains_the_demo_zoo_and_how_long(tmp_path, monkeypatch, capsys):
    """Guards against a first `make demo` that sits silent while it trains eight models (issue 11)."""
    import pandas as pd

    import flatplug.scoring as scoring
    from flatplug.cli.score import DEMO_TRAIN_SECONDS
    from flatplug.store import COLUMNS

    monkeypatch.setenv("FLATPLUG_CACHE", str(tmp_path / "empty-cache"))
    calls = []
    monkeypatch.setattr(scoring, "score", lambda *a, **kw: calls.append(kw) or pd.DataFrame(columns=list(COLUMNS)))
    assert main(["score", "--no-report", "--quiet", "--store", str(tmp_path / "d.db")]) == 0
    err = capsys.readouterr().err
    assert f"training the demo zoo: 8 small CNNs on scikit-learn's digits, about {8 * DEMO_TRAIN_SECONDS} s" in err
    assert calls and calls[0]["store"] == str(tmp_path / "d.db")


def test_many_missing_checkpoints_are_summarised_by_name():
    """Guards against a wall of text when a whole zoo is missing: five in full, the rest by name."""
    from flatplug.cli import UsageError
    from flatplug.cli.score import _check_models

    class Empty:
        def check(self, name):
            raise FileNotFoundError(f"checkpoint of model {name!r} not found: /nowhere/{name}.pt")

    names = [f"m{i}" for i in range(8)]
    with pytest.raises(UsageError) as info:
        _check_models(Empty(), names)
    text = str(info.value)
    assert text.startswith("8 of 8 models cannot be loaded; nothing was scored.")
    assert "/nowhere/m4.pt" in text and "/nowhere/m5.pt" not in text
    assert "and the same for m5, m6, m7 (leave them out with --models)" in text
