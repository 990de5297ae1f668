"""Per-seed robust accuracy of the ART trainers' defaults (only eps), as quoted in tests/adapters/test_art_defaults.py.

    python notes/ecosystem_defaults_spread.py SEEDS N_TRAIN EPOCHS TRAINERS WIDTH
    python notes/ecosystem_defaults_spread.py 0,1,2 2000 2 standard,lfr,awp,awp-trades,flat-adv(sam),flat-adv(none) 16
    python notes/ecosystem_defaults_spread.py 0,1,2 4000 2 "" 8        # every trainer, the 8/16 CNN of the other tests
    python notes/ecosystem_defaults_spread.py 0,1,2 4000 2 art-pgd-at 8  # ART's own AdversarialTrainer, PGD 10 steps
    python notes/ecosystem_defaults_spread.py 0,1,2 4000 2 flat-sam-in-art 8  # test_art_robustness.py's numbers

Run from the repository root with the adapters on PYTHONPATH (see HELPERS.md); one JSON line per run:
clean accuracy and robust accuracy under ART's PGD (eps 0.1, 10 steps of 0.025, no random start) on 500
held-out real MNIST images, and the training's CPU seconds.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path[:0] = ["tests/adapters", "tests"]
from art_support import accuracies, art_pgd, classifier, mnist_split  # noqa: E402

import flatplug_art as fa  # noqa: E402

EPS = 0.1


def art_pgd_at(c):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import AdversarialTrainer

    attack = ProjectedGradientDescent(c, eps=EPS, eps_step=EPS / 4, max_iter=10, num_random_init=1, batch_size=64,
                                      verbose=False)
    return AdversarialTrainer(c, attack, ratio=1.0)


TRAINERS = {
    "standard": None,
    "lfr": lambda c: fa.LFRTrainer(c, eps=EPS),
    "awp": lambda c: fa.AWPTrainer(c, eps=EPS),
    "awp-trades": lambda c: fa.AWPTrainer(c, eps=EPS, mode="trades"),
    "flat-adv(sam)": lambda c: fa.FlatAdversarialTrainer(c, eps=EPS),
    "flat-adv(none)": lambda c: fa.FlatAdversarialTrainer(c, "none", eps=EPS),
    "flat-adv(asam)": lambda c: fa.FlatAdversarialTrainer(c, "asam", eps=EPS),
    "flat-adv(fam)": lambda c: fa.FlatAdversarialTrainer(c, "fam", eps=EPS),
    "flat-adv(lfr)": lambda c: fa.FlatAdversarialTrainer(c, "lfr", eps=EPS),
    "sam": lambda c: fa.SAMTrainer(c),
    "fam": lambda c: fa.FAMTrainer(c),
    "art-pgd-at": art_pgd_at,
}


def main(argv: list[str]) -> None:
    seeds = [int(s) for s in argv[0].split(",")]
    n, epochs = int(argv[1]), int(argv[2])
    width = int(argv[4]) if len(argv) > 4 else 8
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = mnist_split("../shared/data/mnist")
    xtr, ytr = xtr[:n], ytr[:n]

    def net(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, width, 5, stride=2), nn.ReLU(), nn.Conv2d(width, 2 * width, 5, stride=2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(2 * width * 16, 10))

    names = argv[3].split(",") if len(argv) > 3 and argv[3] else [k for k in TRAINERS if k != "art-pgd-at"]
    for seed in seeds:
        for name in names:
            start = time.process_time()
            if name == "flat-sam-in-art":  # test_art_robustness.py: the flat classifier inside ART's AdversarialTrainer
                from art.defences.trainer import AdversarialTrainer

                clf = classifier(seed, cls=fa.FlatPyTorchClassifier, method="sam", rho=0.05)
                np.random.seed(seed)
                AdversarialTrainer(clf, art_pgd(clf, EPS, steps=5), ratio=1.0).fit(xtr, ytr, batch_size=64,
                                                                                   nb_epochs=epochs)
            else:
                clf = classifier(seed, net=net(seed))
                np.random.seed(seed)
                torch.manual_seed(seed)
                if TRAINERS[name] is None:
                    clf.fit(xtr, ytr, batch_size=64, nb_epochs=epochs)
                elif name == "art-pgd-at":
                    TRAINERS[name](clf).fit(xtr, ytr, batch_size=64, nb_epochs=epochs)
                else:
                    TRAINERS[name](clf).fit(xtr, ytr, batch_size=64, nb_epochs=epochs, verbose=False)
            cpu = time.process_time() - start
            clean, robust = accuracies(clf, xte, yte)
            print(json.dumps({"seed": seed, "trainer": name, "n": n, "epochs": epochs, "width": width,
                              "clean": round(clean, 3), "robust": round(robust, 3), "cpu_s": round(cpu, 1)}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
