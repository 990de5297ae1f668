"""The ``flatplug`` command."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from . import __version__, plugins

_default_showwarning = warnings.showwarning


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


def _value(text: str):
    """A CLI value: JSON (numbers, true/false), a fraction such as 8/255, else the string."""
    import json
    from fractions import Fraction

    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        return text


def parse_measures(text: str | None):
    """``"relative_flatness,hessian_eigenvalues:k=3:max_iter=50"`` -> ``{name: params}``."""
    if not text:
        return None
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, *pairs = item.split(":")
        params = {}
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"--measures: expected key=value after {name!r}, got {pair!r}")
            key, value = pair.split("=", 1)
            params[key] = _value(value)
        out[name] = params
    return out


def _cmd_score(args: argparse.Namespace) -> int:
    from .scoring import DatasetSpec, ModelSpec, parse_eps, score

    demo = args.source == "demo"
    options = dict(kv.split("=", 1) for kv in args.source_option)
    if args.manifest:
        options["manifest"] = args.manifest
    if args.model_dir:
        options["model_dir"] = args.model_dir
    if args.threat_model:
        options["threat_model"] = args.threat_model
    if args.source == "robustbench" and args.model_dataset:
        options.setdefault("dataset", args.model_dataset)
    if args.source == "zoo" and "manifest" not in options:
        raise ValueError("--source zoo needs --manifest PATH (a zoo.json such as ../shared/models/zoo.json)")
    factory = plugins.get("sources", args.source)
    source = factory(**options)
    names = args.models.split(",") if args.models else source.names(args.model_dataset)
    dataset = args.dataset or ("digits" if demo else None)
    if dataset is None:
        raise ValueError("--dataset is needed for this source (digits, mnist, imagefolder, ...); "
                         f"registered datasets: {', '.join(plugins.list_plugins('datasets'))}")
    plugins.get("datasets", dataset)  # unknown names fail with the closest match
    eps = parse_eps(args.eps) if args.eps is not None else (0.1 if demo else 8 / 255)
    attack = {"name": args.attack, "eps": eps, "steps": args.steps}
    if demo:
        from .sources.demo import SCORED_MEASURES
    measures = parse_measures(args.measures) or (list(SCORED_MEASURES) if demo else None)
    store = args.store or ("flatplug-demo.db" if demo else "flatplug-results.db")
    specs = [ModelSpec.of(args.source, name, **options) for name in names]
    spec = DatasetSpec(dataset, args.data, args.n, args.seed)
    executor_options = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.executor_option)}
    if args.address:
        executor_options["address"] = args.address
    frame = score(specs, spec, measures=measures, attack=attack, store=store, executor=args.executor,
                  device=args.device, batch_size=args.batch_size, precision=args.precision, quiet=args.quiet,
                  **executor_options)
    ok = frame[frame["status"] == "ok"]
    failed = frame[frame["status"] != "ok"]
    print(f"scored {len(set(frame['model']))} models on {spec.key}: {len(ok)} results, {len(failed)} failures "
          f"-> {store}")
    for _, row in failed.iterrows():
        print(f"  failed: {row['model']} {row['kind']}/{row['name']}: {row['error']}", file=sys.stderr)
    _print_table(frame)
    if not args.no_report:
        from .report import build_report

        out = build_report(store, args.report)
        print(f"report: {out}")
    return 0


def _print_table(frame) -> None:
    """The per-model table (one column per accuracy and measure) on the terminal."""
    import pandas as pd

    from .report import summary_table

    if frame.empty:
        return
    table = summary_table(frame)
    keep = [c for c in table.columns if c not in ("source", "dataset", "seconds", "failures")]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table[keep].to_string(index=False))


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    print(f"report: {build_report(args.store, args.out)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .store import Store

    with Store(args.store) as store:
        frame = store.to_dataframe()
    for col in ("details", "versions"):
        frame[col] = frame[col].map(lambda d: __import__("json").dumps(d, sort_keys=True))
    out = args.out
    if out.endswith(".parquet"):
        try:
            frame.to_parquet(out, index=False)
        except ImportError:
            raise ValueError("writing Parquet needs pyarrow: pip install pyarrow, or export to a .csv file") from None
    elif out.endswith(".csv"):
        frame.to_csv(out, index=False)
    else:
        raise ValueError(f"--out: expected a .csv or .parquet file name, got {out!r}")
    print(f"exported {len(frame)} rows to {out}")
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
    p = sub.add_parser("score", help="score models for flatness and robustness (no arguments: the digits demo zoo)")
    p.add_argument("--source", default="demo", help="model source: demo (default), zoo, robustbench, ...")
    p.add_argument("--manifest", help="zoo manifest (zoo.json) for --source zoo")
    p.add_argument("--model-dir", help="checkpoint folder for --source robustbench")
    p.add_argument("--threat-model", help="threat model for --source robustbench (Linf, L2, corruptions)")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the source (repeatable)")
    p.add_argument("--models", help="comma-separated model names (default: every model of the source)")
    p.add_argument("--model-dataset", help="only the source's models trained on this dataset (e.g. cifar10)")
    p.add_argument("--dataset", help="registered dataset: digits, mnist, imagefolder, ... (demo: digits)")
    p.add_argument("--data", help="path of the dataset (folder or archive)")
    p.add_argument("--n", type=int, help="a deterministic class-balanced subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    p.add_argument("--measures", help="comma-separated measures, each optionally name:key=value:...")
    p.add_argument("--attack", default="pgd", help="attack for robust accuracy (default pgd)")
    p.add_argument("--eps", help="attack radius, e.g. 8/255 (default 8/255; demo 0.1)")
    p.add_argument("--steps", type=int, default=10, help="attack steps (default 10)")
    p.add_argument("--store", help="results store (default flatplug-results.db; demo flatplug-demo.db)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, help="default: from free GPU memory (128 on the CPU); halved on OOM")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                   help="precision of clean accuracy and attacks on CUDA (second-order measures stay fp32)")
    p.add_argument("--executor", default="local", help="local (default) or a registered executor such as ray")
    p.add_argument("--address", help="cluster address for --executor ray (auto, ray://host:port)")
    p.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="executor option, e.g. num_gpus_per_task=0.5 or max_retries=3 for ray (repeatable)")
    p.add_argument("--report", default="flatplug-report", help="report folder (default ./flatplug-report)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser("report", help="write an HTML report with figures from a results store")
    p.add_argument("--store", default="flatplug-results.db")
    p.add_argument("--out", default="flatplug-report")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("export", help="write a results store to CSV or Parquet")
    p.add_argument("--store", default="flatplug-results.db")
    p.add_argument("--out", required=True, help="a .csv or .parquet file")
    p.set_defaults(func=_cmd_export)
    from .leaderboard.cli import add_parser as add_leaderboard_parser  # flatplug leaderboard (issue 15)

    add_leaderboard_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, plugins.PluginWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, LookupError, FileNotFoundError, RuntimeError) as exc:
        print(f"flatplug {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
