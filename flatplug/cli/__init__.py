"""The ``flatplug`` command: ``score``, ``report``, ``export``, ``list`` and ``plugins``.

Exit codes: 0 when everything asked for was done and every result is ok; 1 when a run finished
but some model or result failed (the failures are in the store and the report); 2 for bad input,
refused before any work (nothing is written); 130 when interrupted (Ctrl-C), with what was saved.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from typing import Sequence

from .. import __version__, plugins

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_default_showwarning = warnings.showwarning

#: Python spellings in library messages -> what a CLI user types
_CLI_WORDS = (
    (re.compile(r"pass n <= (\d+) or n=None"), r"pass --n \1 or less, or leave out --n to use them all"),
    (re.compile(r"\bn=None\b"), "no --n"),
    (re.compile(r"\(or path=\.\.\.\)"), ""),
    (re.compile(r"\bdevice=None\b"), "no --device"),
)


def cli_words(message: str) -> str:
    """A library error message with its Python hints (``n=None``) said the CLI way (``--n``)."""
    for pattern, repl in _CLI_WORDS:
        message = pattern.sub(repl, message)
    return message.replace("  ", " ").strip()


class UsageError(ValueError):
    """Bad command-line input, found before any work (exit code 2)."""


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from ..store import LegacyStoreWarning

    if issubclass(category, (plugins.PluginWarning, LegacyStoreWarning)):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    from .commands import add_export, add_list, add_plugins, add_report
    from .score import add_score

    asks_help = argv is not None and any(a in ("-h", "--help") for a in argv)
    parser = argparse.ArgumentParser(prog="flatplug", description="Measure flatness and test whether it buys "
                                     "robustness: score model zoos, report, export.")
    parser.add_argument("--version", action="version", version=f"flatplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_score(sub, asks_help)
    add_report(sub)
    add_export(sub)
    add_list(sub)
    add_plugins(sub)
    from ..leaderboard.cli import add_parser as add_leaderboard

    add_leaderboard(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import StoreError

    warnings.showwarning = _show_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"flatplug {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, LookupError, OSError, StoreError, RuntimeError) as exc:
        print(f"flatplug {args.command}: error: {cli_words(str(exc).strip() or type(exc).__name__)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        _forget_caught_interrupt()


def _forget_caught_interrupt() -> None:
    """Keep the exit code of a Ctrl-C that was caught and reported (130), under ``python -m`` too.

    CPython (3.11, 3.12) remembers a KeyboardInterrupt that escaped code run by ``exec``/``eval``
    of a string (dataclasses, namedtuple and torch build functions that way) even after it was
    caught, and under ``python -m flatplug`` then ends the process with SIGINT at exit, losing the
    exit code. Each exec of a string resets that flag on entry, so a successful empty one clears it.
    """
    exec("")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
