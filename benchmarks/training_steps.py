"""Cost of one training step: LFR vs PGD-AT at the same number of inner steps, SAM vs standard training.

On a real pretrained CIFAR-10 model of the shared zoo and a batch of real CIFAR-10 test images.
Each pair runs interleaved (alternating which goes first) on two copies of the model, each with
its own SGD optimizer; every repeat gives one ratio of the two step times, and the script prints
the median ratio with the goals of issue 3: LFR <= 1.6x PGD-AT, SAM <= 2.1x standard. The SAM
and standard steps are short, so each of their samples averages 3 back-to-back steps.

    .venv/bin/python benchmarks/training_steps.py [--device cpu] [--threads 1] [--inner-steps 10]
"""

from __future__ import annotations

import copy

import torch

import _common as C
from flatplug.training import LFR, PGDAT, SAM, Standard

GOALS = {("LFR", "PGD-AT"): 1.6, ("SAM", "standard"): 2.1}


def stepper(method, model, x, y):
    """A callable running one training step of ``method`` on its own copy of ``model``."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(_repeat: int) -> float:
        model.train()
        return method.step(model, x, y, optimizer).loss

    return step


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=15, n=128)
    p.add_argument("--inner-steps", type=int, default=10, help="PGD steps of PGD-AT = ascent steps of LFR")
    args = p.parse_args(argv)
    device = C.setup(args)
    model = C.load_model(args, device)
    x, y = C.load_cifar(args, "test", args.n)
    x, y = x.to(device), y.to(device)
    k, eps = args.inner_steps, 8 / 255
    C.header("one training step: LFR vs PGD-AT, SAM vs standard", args, device,
             parameters=f"{sum(p.numel() for p in model.parameters()):,}",
             settings=f"eps 8/255, {k} inner steps (LFR ascent steps = PGD steps), SAM rho 0.05")
    pairs = [
        ("LFR", LFR(eps=eps, steps=k), "PGD-AT", PGDAT(eps=eps, steps=k), 1),
        ("SAM", SAM(rho=0.05), "standard", Standard(), 3),
    ]
    rows, verdicts = [], []
    for a, method_a, b, method_b, number in pairs:
        times, _ = C.interleaved({a: stepper(method_a, model, x, y), b: stepper(method_b, model, x, y)},
                                 args.repeats, device, number={a: number, b: number})
        ratios = [ta / tb for ta, tb in zip(times[a], times[b])]
        rows += [C.time_row(f"{a} step", times[a]), C.time_row(f"{b} step", times[b])]
        goal = GOALS[(a, b)]
        ratio = C.median(ratios)
        verdicts.append(f"{a} / {b}: median ratio {ratio:.2f}x (repeats {min(ratios):.2f}-{max(ratios):.2f}); "
                        f"goal <= {goal}x {C.verdict(ratio <= goal)}")
    print(C.table(C.TIME_HEADERS, rows))
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
