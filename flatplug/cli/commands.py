"""``flatplug report``, ``export``, ``list`` and ``plugins``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import plugins

DEFAULT_STORE = "flatplug-results.db"
DEFAULT_REPORT = "flatplug-report"


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


def _existing_store(path: str) -> Path:
    store = Path(path)
    if not store.is_file():
        hint = f" (`flatplug score` writes {DEFAULT_STORE} by default)" if path != DEFAULT_STORE else ""
        raise FileNotFoundError(f"--store {store}: no results store there; score models into it first with "
                                f"`flatplug score --store {store}`, or pass the store you scored into{hint}")
    return store


def _cmd_report(args: argparse.Namespace) -> int:
    from ..report import build_report

    store = _existing_store(args.store)
    print(f"report: {build_report(store, args.out, title=args.title)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..store import Store

    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out: expected a .csv or .parquet file name, got {args.out!r}")
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a folder; pass a file name ending in .csv or .parquet")
    with Store(_existing_store(args.store), readonly=True) as store:
        frame = store.to_dataframe()
    for col in ("params", "details", "versions"):
        frame[col] = frame[col].map(lambda d: d if isinstance(d, str) else json.dumps(d, sort_keys=True))
    if out.suffix == ".parquet":
        try:
            frame.to_parquet(out, index=False)
        except ImportError:
            raise ValueError("writing Parquet needs pyarrow: pip install pyarrow, or export to a .csv file") from None
    else:
        frame.to_csv(out, index=False)
    print(f"exported {len(frame)} rows to {out} (one row per result; model_fingerprint, data_fingerprint and "
          "impl_version say what each was computed from)")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report (figures, correlations, tables) of a results store",
                       description="Write OUT/index.html with correlations of every measure with robust and clean "
                                   "accuracy, one figure per pair, the per-model table, gradient-masking flags, "
                                   "failures and provenance; plus summary.csv and correlations.csv.")
    p.add_argument("--store", default=DEFAULT_STORE, metavar="PATH",
                   help=f"the results store to report (default {DEFAULT_STORE}, what `flatplug score` writes)")
    p.add_argument("--out", default=DEFAULT_REPORT, metavar="FOLDER",
                   help=f"folder for index.html and its figures (default {DEFAULT_REPORT}; created if needed; "
                        "must not be an existing file)")
    p.add_argument("--title", default=None, help="the page's title")
    p.set_defaults(func=_cmd_report)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write every row of a results store to CSV or Parquet",
                       description="One row per result with its model, dataset, fingerprints, implementation "
                                   "version, settings (JSON), value, details (JSON), status and error.")
    p.add_argument("--store", default=DEFAULT_STORE, metavar="PATH",
                   help=f"the results store to export (default {DEFAULT_STORE})")
    p.add_argument("--out", required=True, metavar="FILE", help="a .csv or .parquet file (Parquet needs pyarrow)")
    p.set_defaults(func=_cmd_export)


def add_list(sub) -> None:
    p = sub.add_parser("list", help="list registered names of one kind (or all kinds)")
    p.add_argument("kind", nargs="?", help=f"one of {', '.join(plugins.KINDS)}")
    p.set_defaults(func=_cmd_list)


def add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list every registered object with its kind, plugin and version")
    p.set_defaults(func=_cmd_plugins)
