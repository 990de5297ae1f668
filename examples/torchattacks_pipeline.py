"""The shortest path from a torchattacks pipeline to flatplug: flatness-aware attacks and a recorder.

A torchattacks user attacks a model with `torchattacks.PGD(model, eps=..., ...)(images, labels)`.
flatplug's adapter adds attacks with the same interface (`LocalFlatnessPGD`, `FlatRegionAttack`),
a `TrajectoryRecorder` that wraps any iterating attack and records loss, wrong-class confidence and
relative flatness per step, and `flatplug.report.plot_trajectory` to draw it. Real CIFAR-10 test
images and a real pretrained model from ../shared.

    python examples/torchattacks_pipeline.py --fast
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchattacks

import flatplug as fp
from flatplug.report import plot_trajectory
from flatplug.sources import ZooSource, load_imagefolder
from flatplug_torchattacks import FlatRegionAttack, LocalFlatnessPGD, TrajectoryRecorder

ROOT = Path(__file__).resolve().parents[1]


def wrong_class_confidence(model, x, y) -> float:
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    wrong = p.argmax(1) != y
    return float(p.max(1).values[wrong].mean()) if wrong.any() else float("nan")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    p.add_argument("--model", default="sdp_cnn_a_adv", help="a CIFAR-10 model of the shared zoo")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fast", action="store_true", help="the CI setting (64 images, 10 steps)")
    p.add_argument("--out", default=str(ROOT / "examples" / "out"))
    args = p.parse_args(argv)
    if args.fast:
        args.n, args.steps = 64, 10
    shared = Path(args.shared)
    model = ZooSource(shared / "models" / "zoo.json").load(args.model).module
    x, y = load_imagefolder(shared / "data" / "cifar10" / "test.tar.gz", n=args.n)
    torch.manual_seed(0)

    attacks = {  # the same constructor shape and call as any torchattacks attack
        "torchattacks.PGD": torchattacks.PGD(model, eps=args.eps, alpha=args.eps / 4, steps=args.steps),
        "LocalFlatnessPGD": LocalFlatnessPGD(model, eps=args.eps, steps=args.steps),
        "FlatRegionAttack": FlatRegionAttack(model, eps=args.eps, alpha=args.eps / 4, steps=args.steps),
    }
    table = {}
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    for name, attack in attacks.items():
        adv = attack(x, y)
        with torch.no_grad():
            robust = float((model(adv).argmax(1) == y).float().mean())
        table[name] = {
            "clean": clean,
            "robust": robust,
            "wrong_conf": wrong_class_confidence(model, adv, y),
            "rel_flatness(adv)": fp.measures.relative_flatness(model, (adv, y)).value,
            "local_flatness(adv)": fp.measures.local_flatness(model, (adv, y), eps=args.eps, steps=3).value,
        }
    recorder = TrajectoryRecorder(torchattacks.PGD(model, eps=args.eps, alpha=args.eps / 4, steps=args.steps))
    recorder(x, y)  # same adversarial images as the wrapped PGD
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_trajectory(recorder.record, out / "pgd_trajectory.png")

    cols = list(next(iter(table.values())))
    print(f"{args.model}, n={args.n}, eps={args.eps:.4g}".ljust(24) + "".join(f"{c:>20}" for c in cols))
    for name, row in table.items():
        print(f"{name:<24}" + "".join(f"{row[c]:>20.4g}" for c in cols))
    print(f"PGD trajectory (loss, confidence, relative flatness per step): {out / 'pgd_trajectory.png'}")
    return table


if __name__ == "__main__":
    main()
    sys.exit(0)
