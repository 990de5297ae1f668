"""The ``flatplug`` command."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__, plugins


def _cmd_plugins(args: argparse.Namespace) -> int:
    rows = plugins.all_registered()
    width = max([len(r.name) for r in rows] + [4])
    print(f"{'kind':<10} {'name':<{width}} {'plugin':<22} version")
    for r in rows:
        print(f"{r.kind[:-1]:<10} {r.name:<{width}} {r.plugin:<22} {r.version}")
    for name, error in sorted(plugins.get_plugins().failed.items()):
        print(f"(failed)   {name}: {error}", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(plugins.KINDS)
    for kind in kinds:
        if kind not in plugins.KINDS:
            print(f"flatplug list: unknown kind {kind!r}; choose one of {', '.join(plugins.KINDS)}", file=sys.stderr)
            return 2
        names = plugins.list_plugins(kind)
        print(f"{kind}: {', '.join(names) if names else '(none)'}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatplug", description="Measure flatness and test whether it buys robustness.")
    parser.add_argument("--version", action="version", version=f"flatplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list every registered object with its kind, plugin and version")
    p.set_defaults(func=_cmd_plugins)
    p = sub.add_parser("list", help="list registered names of one kind (or all kinds)")
    p.add_argument("kind", nargs="?", help=f"one of {', '.join(plugins.KINDS)}")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("score", help="with no arguments: train a small model on scikit-learn's digits and measure it")
    p.add_argument("--out", default="flatplug-demo", help="folder for the demo's results (default: ./flatplug-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, LookupError, FileNotFoundError) as exc:
        print(f"flatplug {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
