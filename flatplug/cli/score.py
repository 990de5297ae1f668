"""``flatplug score``: check every name and setting first, then score, then say how it went.

Everything the command can check without scoring is checked before the store is opened: the
source and its options, every model name, the dataset, each attack and its parameters, each
measure and its parameters, the radius. A mistake exits with code 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import plugins
from ..sources.preflight import describe, unloadable
from . import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from .commands import DEFAULT_REPORT, DEFAULT_STORE

#: The demo's defaults (the digits zoo): the dataset it was trained on and a radius that suits 8x8 digits.
DEMO_DATASET, DEMO_EPS = "digits", 0.1
#: default radius by registered dataset when --eps is not given (L-inf; others: CIFAR-10's 8/255):
#: MNIST's usual 0.3 (Madry et al.), where 8/255 leaves a robust model's accuracy untouched
DATASET_EPS = {"mnist": 0.3, DEMO_DATASET: DEMO_EPS}
#: CPU seconds to train one demo model (measured: 4 to 8 s each on the 2-core development machine)
DEMO_TRAIN_SECONDS = 6
#: The attack each source is evaluated with when --attack is not given.
SOURCE_ATTACKS = {"robustbench": [{"name": "autoattack", "version": "standard"}]}
DEFAULT_ATTACKS = [{"name": "pgd"}]
NORMS = {"linf": "linf", "l2": "l2"}


def value(text: str) -> Any:
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


def _pairs(items: list[str], option: str) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise UsageError(f"{option}: expected KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        out.append((key.strip(), value(text)))
    return out


def parse_measures(text: str | None) -> dict[str, dict[str, Any]] | None:
    """``"relative_flatness,hessian_eigenvalues:k=3:max_iter=50"`` -> ``{name: params}`` (empty items ignored)."""
    if not text:
        return None
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, *pairs = item.split(":")
        params = {}
        for pair in pairs:
            if "=" not in pair:
                raise UsageError(f"--measures: expected key=value after {name!r}, got {pair!r} "
                                 "(e.g. hessian_eigenvalues:k=3:max_iter=50)")
            key, text_value = pair.split("=", 1)
            params[key] = value(text_value)
        out[name.strip()] = params
    return out or None


@dataclass
class Plan:
    """What ``flatplug score`` will do, after every check passed."""

    source: str
    options: dict[str, Any]
    models: list[str]
    dataset: str
    attacks: list[dict[str, Any]]
    measures: Any
    store: str
    untrained: list[str] = field(default_factory=list)


def _source(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any]:
    name = args.source or ("zoo" if args.manifest else "robustbench" if args.model_dir else "demo")
    for flag, wanted, given in (("--manifest", "zoo", args.manifest), ("--model-dir", "robustbench", args.model_dir),
                                ("--threat-model", "robustbench", args.threat_model)):
        if given and name != wanted:
            raise UsageError(f"{flag} is an option of --source {wanted}, not of --source {name}; "
                             f"drop {flag} or pass --source {wanted}")
    options = dict(_pairs(args.source_option, "--source-option"))
    if args.manifest:
        options["manifest"] = args.manifest
    if args.model_dir:
        options["model_dir"] = args.model_dir
    if args.threat_model:
        options["threat_model"] = args.threat_model
    if name == "robustbench" and args.model_dataset:
        options.setdefault("dataset", args.model_dataset)
    if name == "zoo" and "manifest" not in options:
        raise UsageError("--source zoo needs --manifest PATH (a zoo.json such as ../shared/models/zoo.json)")
    factory = plugins.get("sources", name)  # unknown sources: the closest match
    return name, options, factory(**options)


def _models(args: argparse.Namespace, source_name: str, source: Any) -> list[str]:
    if not args.models:
        names = source.names(args.model_dataset)
        if not names:
            raise UsageError(f"--source {source_name} has no models" + (f" for {args.model_dataset}"
                                                                         if args.model_dataset else ""))
        return names
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise UsageError("--models: no model names given (comma-separated, e.g. --models a,b)")
    known = source.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, known, n=1, cutoff=0.5)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
        raise UsageError(f"--models: unknown model{'s' if len(unknown) > 1 else ''} {', '.join(hints)} in --source "
                         f"{source_name}; it has {shown}")
    return list(dict.fromkeys(names))


def _check_models(source: Any, names: list[str]) -> None:
    """Refuse the run, naming every model that cannot be loaded as things stand (``source.check``)."""
    problems = unloadable(source, names)
    if problems:
        raise UsageError(f"{len(problems)} of {len(names)} models cannot be loaded; nothing was scored. "
                         f"{describe(problems)}" + (" (leave them out with --models)" if len(names) > 1 else ""))


#: RobustBench's radii per (dataset, threat model): its leaderboards' own (ImageNet L-inf: 4/255)
ROBUSTBENCH_EPS = {("cifar10", "Linf"): 8 / 255, ("cifar10", "L2"): 0.5, ("cifar100", "Linf"): 8 / 255,
                   ("cifar100", "L2"): 0.5, ("imagenet", "Linf"): 4 / 255}


def robustbench_eps(dataset: str, threat: str) -> float | None:
    """RobustBench's radius for ``dataset`` at ``threat`` (None: no L-p leaderboard, e.g. corruptions)."""
    return ROBUSTBENCH_EPS.get((dataset, threat), {"Linf": 8 / 255, "L2": 0.5}.get(threat))


def _attacks(args: argparse.Namespace, source_name: str,
             options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    from ..scoring import attack_parameters, parse_eps

    if args.attack:
        specs = [{"name": a.strip()} for a in args.attack if a.strip()]
    else:
        specs = [dict(s) for s in SOURCE_ATTACKS.get(source_name, DEFAULT_ATTACKS)]
        if any(s["name"] not in plugins.list_plugins("attacks") and s["name"] not in ("pgd", "pgdl2") for s in specs):
            raise UsageError(f"the default attack for --source {source_name} is AutoAttack (RobustBench's own "
                             "evaluation), registered by the torchattacks adapter: pip install -e adapters/torchattacks,"
                             " or pass another --attack (e.g. --attack pgd)")
    threat = str((options or {}).get("threat_model") or "Linf")
    dataset = str((options or {}).get("dataset") or "cifar10")
    if source_name == "robustbench":
        default_eps = robustbench_eps(dataset, threat)
        if default_eps is None and (args.eps is None or not args.attack):
            raise UsageError(f"--threat-model {threat}: RobustBench evaluates these models by their accuracy on "
                             "corrupted images, not under an L-p attack, so there is no attack or radius of its "
                             "own to default to; score the models of an L-p threat model (--threat-model Linf or "
                             "L2), or name the attack and radius yourself (--attack ... --eps ...)")
    else:
        dataset_name = getattr(args, "dataset", None) or (DEMO_DATASET if source_name == "demo" else None)
        default_eps = DATASET_EPS.get(dataset_name, 8 / 255)
    eps = parse_eps(args.eps) if args.eps is not None else default_eps
    norm = None
    if args.norm is not None:
        norm = NORMS.get(args.norm.lower())
        if norm is None:
            raise UsageError(f"--norm: expected Linf or L2, got {args.norm!r}")
    elif source_name == "robustbench" and threat == "L2":
        # RobustBench's L2 leaderboard: every attack in L2 (a fixed L-inf attack such as torchattacks'
        # pgd is refused by its own norm check, naming its L2 counterpart)
        norm = "l2"
    options = _pairs(args.attack_option, "--attack-option")
    accepted_any: dict[str, bool] = {k: False for k, _ in options}
    steps_taken = False
    for spec in specs:
        accepted = attack_parameters(spec["name"])  # unknown attacks: the closest match
        takes = (lambda key: True) if accepted is None else (lambda key: key in accepted)
        if takes("eps"):
            spec["eps"] = eps
        if args.steps is not None and takes("steps"):
            spec["steps"] = args.steps
            steps_taken = True
        if norm is not None:
            spec["norm"] = norm  # fixed-norm attacks check it against their own norm
        for key, val in options:
            target, _, param = key.rpartition(".")
            if target and target != spec["name"]:
                continue
            if takes(param):
                spec[param] = val
                accepted_any[key] = True
    if args.steps is not None and not steps_taken:
        raise UsageError(f"--steps: none of the attacks ({', '.join(s['name'] for s in specs)}) takes a number of "
                         "steps; drop --steps")
    for key, used in accepted_any.items():
        if not used:
            what = "; ".join(f"{s['name']}: {', '.join(attack_parameters(s['name']) or ('(any)',))}" for s in specs)
            raise UsageError(f"--attack-option {key}: no attack of this run takes {key.rpartition('.')[2]!r} "
                             f"(they take {what})")
    return specs


def preflight(args: argparse.Namespace) -> Plan:
    """Every check that needs no scoring; raises (exit code 2) before anything is written."""
    from ..scoring import check_attack, check_measures, resolve_attacks, resolve_measures

    if args.n is not None and args.n < 1:
        raise UsageError(f"--n: expected a positive number of images, got {args.n}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if args.executor == "local":
        from .._resources import check_precision
        from ..scoring.job import resolve_device

        try:
            check_precision(getattr(args, "precision", "fp32"), resolve_device(args.device))
        except ValueError as exc:
            raise UsageError(f"--{exc}") from None
    name, options, source = _source(args)
    models = _models(args, name, source)
    dataset = args.dataset or (DEMO_DATASET if name == "demo" else None)
    if dataset is None:
        raise UsageError("--dataset is needed for this source (digits, mnist, imagefolder, ...); "
                         f"registered datasets: {', '.join(plugins.list_plugins('datasets'))}")
    plugins.get("datasets", dataset)  # unknown names fail with the closest match
    attacks = resolve_attacks(_attacks(args, name, options))
    for spec in attacks:
        check_attack(spec)
    measures = parse_measures(args.measures)
    if measures is None and name == "demo":
        from ..sources.demo import SCORED_MEASURES

        measures = list(SCORED_MEASURES)
    check_measures(resolve_measures(measures, attacks[0]))  # unknown names: the closest match
    if args.executor == "local":  # a cluster's workers may see checkpoints this machine does not
        _check_models(source, models)
    untrained = source.missing() if hasattr(source, "missing") else []
    return Plan(name, options, models, dataset, attacks, measures, args.store or DEFAULT_STORE, untrained)


def _saved_since(store: str, start: float) -> int:
    from ..store import Store

    if not Path(store).is_file():
        return 0
    try:
        with Store(store, readonly=True) as db:
            return sum(1 for r in db.rows() if r["created"] >= start)
    except Exception:  # noqa: BLE001 - only a count for the message
        return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from ..scoring import DatasetSpec, ModelSpec, score

    plan = preflight(args)
    if plan.untrained:
        print(f"training the demo zoo: {len(plan.untrained)} small CNNs on scikit-learn's digits, about "
              f"{DEMO_TRAIN_SECONDS * len(plan.untrained)} s of CPU time (once: they are cached for later runs)",
              file=sys.stderr)
    specs = [ModelSpec.of(plan.source, name, **plan.options) for name in plan.models]
    data = DatasetSpec(plan.dataset, args.data, args.n, args.seed)
    executor_options = {k: v for k, v in _pairs(args.executor_option, "--executor-option")}
    if args.address:
        executor_options["address"] = args.address
    start = time.time()
    try:
        frame = score(specs, data, measures=plan.measures, attack=plan.attacks, store=plan.store,
                      executor=args.executor, device=args.device, batch_size=args.batch_size,
                      precision=args.precision, quiet=args.quiet, rerun=args.rerun, **executor_options)
    except KeyboardInterrupt:
        print(f"interrupted: {_saved_since(plan.store, start)} results saved in {plan.store}; rerun the same command "
              "to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_table(frame)
    failed = frame[frame["status"] != "ok"]
    bad = sorted(set(failed["model"]))
    n_models = len(set(frame["model"]))
    where = f"-> {plan.store}"
    if not args.no_report:
        from ..report import build_report

        where += f"; report {build_report(plan.store, args.report)}"
    if bad:
        for _, row in failed.iterrows():
            print(f"  failed: {row['model']} {row['kind']} {row['name']}: {str(row['error']).splitlines()[0]}",
                  file=sys.stderr)
        print(f"scored {_count(n_models, 'model')} on {data.key}: {n_models - len(bad)} ok, {len(bad)} failed "
              f"({', '.join(bad)}) {where}", file=sys.stderr)
        return EXIT_FAILED
    print(f"scored {_count(n_models, 'model')} on {data.key}: {_count(len(frame), 'result')}, all ok {where}")
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_table(frame) -> None:
    """The per-model table (one column per accuracy and measure) on the terminal."""
    import pandas as pd

    from ..report import summary_table

    if frame.empty:
        return
    table = summary_table(frame)
    keep = [c for c in table.columns if c not in ("source", "dataset", "seconds", "failures")]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table[keep].to_string(index=False))


def add_score(sub, asks_help: bool = False) -> None:
    defaults = ""
    if asks_help:  # listing the default measures loads the plugins: only when help is asked for
        from ..scoring import default_measures

        defaults = f" (default: {', '.join(default_measures())}; demo: the demo's six)"
    p = sub.add_parser("score", help="score models for flatness and robustness (no arguments: the digits demo zoo)",
                       description="Score every model: clean accuracy, robust accuracy under each attack (with a "
                                   "gradient-masking check), and each measure, into a results store; then write "
                                   "the report. Without arguments: the demo zoo on scikit-learn's digits.")
    p.add_argument("--source", default=None, help="model source: demo (default), zoo (implied by --manifest), "
                                                  "robustbench (implied by --model-dir), or any registered source")
    p.add_argument("--manifest", help="zoo manifest (zoo.json) for --source zoo")
    p.add_argument("--model-dir", help="checkpoint folder for --source robustbench")
    p.add_argument("--threat-model", help="threat model for --source robustbench (Linf, L2, corruptions)")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the source (repeatable)")
    p.add_argument("--models", help="comma-separated model names (default: every model of the source)")
    p.add_argument("--model-dataset", help="only the source's models trained on this dataset (e.g. cifar10)")
    p.add_argument("--dataset", help="registered dataset: digits, mnist, imagefolder, ... (demo: digits)")
    p.add_argument("--data", help="path of the dataset (folder or archive)")
    p.add_argument("--n", type=int, help="a deterministic class-balanced subset of N images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    p.add_argument("--measures", help="comma-separated measures, each optionally name:key=value:..." + defaults)
    p.add_argument("--attack", action="append", default=None, metavar="NAME",
                   help="attack for robust accuracy, repeatable: the first is the main one, later ones check it "
                        "for gradient masking (e.g. --attack pgd --attack autoattack). Default pgd; for --source "
                        "robustbench autoattack (version standard). Any registered attack: flatplug list attacks")
    p.add_argument("--eps", help="attack radius on [0, 1] images, e.g. 8/255 (default 8/255; --dataset mnist 0.3; "
                                 "demo/digits 0.1; robustbench: its leaderboard's, 8/255 L-inf, 4/255 L-inf on "
                                 "ImageNet, 0.5 L2)")
    p.add_argument("--steps", type=int, default=None,
                   help="attack steps, for the attacks that take them (default: each attack's own)")
    p.add_argument("--norm", default=None, metavar="Linf|L2",
                   help="the attack's norm (default: the attack's own; L2 for --source robustbench --threat-model L2)")
    p.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any attack parameter, for the attacks that take it (ATTACK.KEY=VALUE for one attack), "
                        "e.g. version=rand for autoattack (repeatable)")
    p.add_argument("--store", help=f"results store (default {DEFAULT_STORE}); a rerun skips what is there")
    p.add_argument("--rerun", action="store_true", help="compute every result again, even those already stored")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, help="default: from free GPU memory (128 on the CPU); halved on OOM")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                   help="precision of clean accuracy and attacks on CUDA (second-order measures stay fp32)")
    p.add_argument("--executor", default="local", help="local (default) or a registered executor such as ray")
    p.add_argument("--address", help="cluster address for --executor ray (auto, ray://host:port)")
    p.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="executor option, e.g. num_gpus_per_task=0.5 or max_retries=3 for ray (repeatable)")
    p.add_argument("--report", default=DEFAULT_REPORT, metavar="FOLDER",
                   help=f"report folder (default ./{DEFAULT_REPORT})")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_score)
