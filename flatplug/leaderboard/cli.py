"""``flatplug leaderboard``: score every zoo model and write docs/leaderboard.md and docs/leaderboard/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_STORE = "leaderboard.db"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``leaderboard`` subcommand on the ``flatplug`` parser's subparsers."""
    p = sub.add_parser("leaderboard", help="score every model of ../shared/models under PGD and AutoAttack with "
                                           "every measure; write docs/leaderboard.md and docs/leaderboard/")
    p.add_argument("--shared", default="../shared", help="folder with models/zoo.json and data/ (default ../shared)")
    p.add_argument("--models", help="comma-separated zoo models (default: all 24)")
    p.add_argument("--n", default="auto",
                   help="images per dataset: auto (full test sets on a GPU, the documented CPU subsets otherwise), "
                        "all, or a number (class-balanced, seed 0)")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"results store; a rerun skips what is in it "
                                                          f"(default {DEFAULT_STORE})")
    p.add_argument("--markdown", default="docs/leaderboard.md",
                   help="the leaderboard tables (default docs/leaderboard.md)")
    p.add_argument("--out", default="docs/leaderboard", help="HTML report, CSV and Parquet (default docs/leaderboard)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--executor", default="local",
                   help="local (default) or a registered executor such as ray; a GPU cluster driven from a CPU "
                        "machine also needs --n all --aa standard")
    p.add_argument("--address", help="cluster address for --executor ray (auto: the running cluster; without it "
                                      "each of the run's scoring calls starts and stops a local Ray)")
    p.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="executor option, e.g. num_gpus_per_task=0.25 (repeatable)")
    p.add_argument("--aa", default="auto", choices=("auto", "standard", "plus", "rand", "lite"),
                   help="AutoAttack: auto (standard on a GPU, lite on the CPU), a version of the original AutoAttack, "
                        "or lite (the per-image ensemble of APGD-CE and APGD-T only)")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the correlation intervals")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)
    return p


def _n(text: str) -> int | str | None:
    if text == "auto":
        return "auto"
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--n: expected auto, all or a number of images, got {text!r}") from None


def main(args: argparse.Namespace) -> int:
    import json

    from . import leaderboard

    options = {}
    for kv in args.executor_option:
        if "=" not in kv:
            raise ValueError(f"--executor-option: expected KEY=VALUE, got {kv!r}")
        key, value = kv.split("=", 1)
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    if args.address:
        options["address"] = args.address
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    command = "flatplug leaderboard" + "".join(f" {a}" for a in sys.argv[2:]) if sys.argv[1:2] == ["leaderboard"] \
        else "flatplug leaderboard"
    paths = leaderboard(shared=Path(args.shared), models=models, n=_n(args.n), store=args.store,
                        markdown=args.markdown, out=args.out, device=args.device, executor=args.executor,
                        aa=args.aa, n_boot=args.boot, quiet=args.quiet, command=command, **options)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
