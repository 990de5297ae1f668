"""Score named RobustBench models from a local model_dir: clean and robust accuracy, flatness, a report.

What a user with RobustBench checkpoints runs (on a GPU for real sizes). Needs the RobustBench
adapter (``pip install -e adapters/robustbench``), which registers the ``robustbench`` model source
and the ``cifar10``/``cifar100``/``imagenet`` datasets. Checkpoints are read from RobustBench's
layout, ``<model-dir>/<dataset>/<threat-model>/<Name>.pt``; nothing is downloaded unless you pass
``--download``. For each model the script records, in a results store, the clean accuracy, the
robust accuracy under the attack and each measure (``fp.score``), prints the per-model table next
to the leaderboard's numbers, and writes the HTML report (``flatplug.report.build_report``).

    python examples/score_robustbench.py --model-dir ./models --models Wong2020Fast,Engstrom2019Robustness \\
        --dataset cifar10 --data-dir ./data --n 1000 --device cuda

``--data-loader``/``--data`` score on other images than RobustBench's loader gives, e.g. the core
``imagefolder`` dataset on a CIFAR-10 tarball: ``--data-loader imagefolder --data
../shared/data/cifar10/test.tar.gz``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import flatplug as fp
from flatplug.cli.score import robustbench_eps
from flatplug.report import build_report, summary_table
from flatplug.scoring import DatasetSpec, ModelSpec, attack_parameters, parse_eps

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_DATASETS = ("cifar10", "cifar100", "imagenet")  # the robustbench adapter's loaders (take allow_download)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="./models", help="RobustBench's checkpoint folder (default ./models)")
    p.add_argument("--models", required=True, help="comma-separated RobustBench names, e.g. Wong2020Fast,Standard")
    p.add_argument("--dataset", default="cifar10", choices=ADAPTER_DATASETS, help="the models' data set")
    p.add_argument("--threat-model", default="Linf", choices=("Linf", "L2", "corruptions"))
    p.add_argument("--data-dir", default="./data", help="RobustBench's data folder (default ./data)")
    p.add_argument("--data-loader", default=None,
                   help="registered dataset to score on (default: --dataset, through robustbench.data); "
                        "e.g. imagefolder")
    p.add_argument("--data", default=None, help="path given to the data loader (default: --data-dir)")
    p.add_argument("--n", type=int, default=1000, help="test images (a class-balanced subset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack", default=None, help="registered attack (default pgd, or pgdl2 for L2; RobustBench's own "
                                                  "evaluation is autoattack, slow on a CPU)")
    p.add_argument("--eps", default=None, help="attack radius (default RobustBench's: 8/255 for Linf, 4/255 for "
                                               "ImageNet Linf, 0.5 for L2)")
    p.add_argument("--steps", type=int, default=None, help="attack steps, for attacks that take them "
                                                           "(default: the attack's own, 10 for PGD)")
    p.add_argument("--measures", default="relative_flatness,hessian_eigenvalues",
                   help="comma-separated registered measures")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--download", action="store_true", help="let RobustBench download missing checkpoints/data")
    p.add_argument("--store", default=None, help="results store (default <out>/robustbench.db; reruns skip what is there)")
    p.add_argument("--out", default=str(ROOT / "examples" / "out"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        p.error("--models: name at least one RobustBench model")
    if args.threat_model == "corruptions":
        p.error("--threat-model corruptions: corruption robustness is not an L-p attack; score Linf or L2 models")
    args.attack = args.attack or ("pgdl2" if args.threat_model == "L2" else "pgd")
    args.eps = parse_eps(args.eps) if args.eps else robustbench_eps(args.dataset, args.threat_model)
    args.data_loader = args.data_loader or args.dataset
    args.data = args.data or args.data_dir
    args.measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    args.store = args.store or str(Path(args.out) / "robustbench.db")
    return args


def leaderboard(args, name: str) -> dict:
    """The leaderboard's clean and robust accuracy for ``name`` (the adapter's metadata), or empty."""
    try:
        source = fp.plugins.get("sources", "robustbench")(model_dir=args.model_dir, dataset=args.dataset,
                                                          threat_model=args.threat_model, allow_download=False)
        return source.metadata(name)
    except Exception:  # metadata is a nicety: never fail the run over it
        return {}


def print_table(table, args) -> None:
    robust = [c for c, m in table.attrs["columns"].items() if m["kind"] == "attack"]
    measures = [c for c, m in table.attrs["columns"].items() if m["kind"] == "measure"]
    cols = ["clean_accuracy", *robust, *measures]
    print(f"\nRobustBench {args.dataset}/{args.threat_model}, {args.n} images from {args.data_loader} ({args.data}), "
          f"{args.attack} eps={args.eps:.4g}" + (f", {args.steps} steps" if args.steps else ""))
    head = f"{'model':<34}" + "".join(f"{c[:26]:>28}" for c in cols) + f"{'leaderboard clean/robust':>26}"
    print(head)
    print("-" * len(head))
    for _, r in table.iterrows():
        meta = leaderboard(args, r["model"])
        ref = meta.get("reported_clean_accuracy"), meta.get("autoattack_accuracy")
        ref_text = "/".join("-" if v is None else f"{v:.3f}" for v in ref)
        cells = "".join("{:>28}".format("failed" if isinstance(r[c], float) and math.isnan(r[c]) else f"{r[c]:.4g}")
                        for c in cols)
        print(f"{r['model']:<34}{cells}{ref_text:>26}")
        if r["failures"]:
            print(f"  failed: {r['failures']}")


def main(argv=None):
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    specs = [ModelSpec.of("robustbench", name, model_dir=str(args.model_dir), dataset=args.dataset,
                          threat_model=args.threat_model, allow_download=args.download) for name in args.models]
    options = (("allow_download", args.download),) if args.data_loader in ADAPTER_DATASETS else ()
    data = DatasetSpec(args.data_loader, str(args.data), n=args.n, seed=args.seed, options=options)
    attack = {"name": args.attack, "eps": args.eps}
    if args.threat_model == "L2":
        attack["norm"] = "l2"  # a fixed L-inf attack (torchattacks' pgd) is refused, naming pgdl2
    if args.steps is not None and "steps" in (attack_parameters(args.attack) or ("steps",)):
        attack["steps"] = args.steps  # only to attacks that take steps (AutoAttack does not)
    frame = fp.score(specs, data, measures=args.measures, attack=attack,
                     store=args.store, device=args.device, batch_size=args.batch_size, quiet=args.quiet)
    table = summary_table(frame)
    print_table(table, args)
    page = build_report(frame, Path(args.out) / "robustbench-report",
                        title=f"RobustBench {args.dataset}/{args.threat_model}: flatness versus robustness")
    print(f"store: {args.store}\nreport: {page}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
