"""The flatness leaderboard of the real model zoo (``../shared/models``).

``leaderboard()`` (and ``flatplug leaderboard``, ``make leaderboard``) scores every zoo model on its
own test set at the threat models its authors used, under PGD and AutoAttack and with every
flatness measure (:mod:`.plan` says exactly what runs), through ``fp.score`` into a resumable
store, then writes ``docs/leaderboard.md`` and ``docs/leaderboard/`` (:mod:`.write`). Published
figures of the models' authors live in ``published.json`` (:mod:`.published`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["CPU_N", "PUBLISHED_FILE", "THREAT_MODELS", "Entry", "Plan", "RunResult", "ThreatModel", "best_robust",
           "build_table", "default_plan", "difference", "entries_at", "leaderboard", "load_published",
           "partial_correlations", "partial_kendall", "partial_spearman", "run_plan", "stages"]

_LAZY = {"CPU_N": "plan", "THREAT_MODELS": "plan", "Plan": "plan", "ThreatModel": "plan", "default_plan": "plan",
         "PUBLISHED_FILE": "published", "Entry": "published", "best_robust": "published", "difference": "published",
         "entries_at": "published", "load_published": "published", "RunResult": "run", "run_plan": "run",
         "stages": "run", "partial_correlations": "stats", "partial_kendall": "stats", "partial_spearman": "stats",
         "build_table": "table"}


def __getattr__(name: str) -> Any:
    # submodules load on first use, so ``flatplug --help`` does not import torch for this subcommand
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def leaderboard(*, shared: str | os.PathLike = "../shared", models: list[str] | None = None,
                n: int | str | None = "auto", store: str | os.PathLike = "leaderboard.db",
                markdown: str | os.PathLike = "docs/leaderboard.md", out: str | os.PathLike = "docs/leaderboard",
                device: str | None = None, executor: str = "local", aa: str = "auto",
                n_boot: int = 1000, quiet: bool = False, command: str = "flatplug leaderboard",
                log: Callable[[str], None] = print, **executor_options: Any) -> dict[str, Path]:
    """Score the zoo (resuming from ``store``) and write the leaderboard; returns the written paths.

    ``n``: ``"auto"`` (full test sets on a GPU, :data:`CPU_N` images per dataset on the CPU), ``None``
    (full test sets) or a number of class-balanced images. ``aa``: ``"auto"`` (the standard AutoAttack
    on a GPU, AA-lite on the CPU), ``"standard"``, ``"plus"``, ``"rand"`` or ``"lite"`` (see
    :mod:`.plan`). ``executor``: ``"local"`` or ``"ray"`` (``executor_options`` such as ``address``
    or ``num_gpus_per_task`` pass through to it).
    """
    import json

    from .plan import default_plan
    from .published import load_published
    from .run import run_plan
    from .table import build_table
    from .write import write_all

    t0 = time.perf_counter()
    plan = default_plan(shared, n=n, models=models, device=device, aa=aa)
    zoo = json.loads(plan.manifest.read_text())
    result = run_plan(plan, store=str(store), executor=executor, device=device, quiet=quiet, log=log,
                      **executor_options)
    table = build_table(plan, result.frame, result.medians, load_published(), zoo)
    paths = write_all(plan, result, table, md_path=markdown, out_dir=out, command=command, n_boot=n_boot, started=t0)
    log(f"leaderboard: {len(table)} rows, wall time {time.perf_counter() - t0:.0f} s "
        f"on {result.record['machine'].get('cpu')} ({result.record['device']})")
    return paths
