"""The shortest path from an ART pipeline to flatplug: the same PyTorchClassifier, a flatness-aware trainer.

An ART user already has a `PyTorchClassifier` and ART's `ProjectedGradientDescent`. Adding
flatplug is two lines: build a flatplug trainer from the classifier (`LFRTrainer`, `SAMTrainer`,
`AWPTrainer`, `FAMTrainer`, `FlatAdversarialTrainer`) with its defaults (only the radius `eps`
where it needs one) and call `fit`, exactly as ART's own trainers are called; then measure the
result with flatplug's ART metrics. Real MNIST from ../shared, a tiny CNN, the same budget for every run.

    python examples/art_pipeline.py --fast          # about a minute on a laptop CPU
    python examples/art_pipeline.py --train 8000 --epochs 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

import flatplug_art as fa
from flatplug.sources import load_mnist

ROOT = Path(__file__).resolve().parents[1]


def make_classifier(seed: int) -> PyTorchClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    return PyTorchClassifier(net, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=3e-3),
                             input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0),
                             preprocessing=(0.1307, 0.3081))


def robust_accuracy(clf: PyTorchClassifier, x: np.ndarray, y: np.ndarray, eps: float) -> float:
    attack = ProjectedGradientDescent(clf, eps=eps, eps_step=eps / 4, max_iter=10, verbose=False)
    return float((clf.predict(attack.generate(x)).argmax(1) == y).mean())


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder")
    p.add_argument("--fast", action="store_true", help="the CI setting (4,000 training images, 2 epochs)")
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.fast:
        args.train, args.test, args.epochs = 4000, 500, 2
    torch.set_num_threads(1)  # a tiny CNN: threads cost more than they give
    x, y = load_mnist(Path(args.shared) / "data" / "mnist", n=args.train + args.test, seed=args.seed)
    x, y = x.numpy(), y.numpy()
    xtr, ytr, xte, yte = x[: args.train], y[: args.train], x[args.train:], y[args.train:]

    results = {}
    clf = make_classifier(args.seed)
    clf.fit(xtr, ytr, batch_size=64, nb_epochs=args.epochs)  # the ART pipeline as it was
    results["standard (ART fit)"] = clf

    clf = make_classifier(args.seed)
    fa.LFRTrainer(clf, eps=args.eps).fit(xtr, ytr, batch_size=64, nb_epochs=args.epochs,
                                         verbose=False, seed=args.seed)  # <- flatplug
    results["LFR (flatplug_art.LFRTrainer)"] = clf

    clf = make_classifier(args.seed)
    fa.AWPTrainer(clf, eps=args.eps, mode="trades").fit(xtr, ytr, batch_size=64, nb_epochs=args.epochs,
                                                        verbose=False, seed=args.seed)
    results["TRADES-AWP (flatplug_art.AWPTrainer)"] = clf

    clf = make_classifier(args.seed)
    fa.SAMTrainer(clf).fit(xtr, ytr, batch_size=64, nb_epochs=args.epochs, verbose=False, seed=args.seed)
    results["SAM (flatplug_art.SAMTrainer)"] = clf

    table = {}
    for name, clf in results.items():
        table[name] = {
            "clean": float((clf.predict(xte).argmax(1) == yte).mean()),
            f"pgd@{args.eps}": robust_accuracy(clf, xte, yte, args.eps),
            "local_flatness": fa.metrics.local_flatness(clf, xte[:200], yte[:200], eps=args.eps, steps=5),
            "relative_flatness": fa.metrics.relative_flatness(clf, xte, yte),
        }
    cols = list(next(iter(table.values())))
    print(f"{'MNIST, ART PGD eps=%g' % args.eps:<38}" + "".join(f"{c:>20}" for c in cols))
    for name, row in table.items():
        print(f"{name:<38}" + "".join(f"{row[c]:>20.4g}" for c in cols))
    return table


if __name__ == "__main__":
    main()
    sys.exit(0)
