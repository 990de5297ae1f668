"""Cost of one training step: LFR vs the official LFR algorithm and PGD-AT, SAM vs standard training.

On a real pretrained CIFAR-10 model of the shared zoo and a batch of real CIFAR-10 test images.
Each group runs interleaved (rotating which goes first) on copies of the model, each with its own
SGD optimizer; every round gives one ratio of step times, and the script prints the median ratio
over rounds, of wall-clock time and of process CPU time (the steadier figure on a shared CPU).

* LFR (``flatplug.training.LFR``, q = 1, linf) vs the official LFR algorithm (Xu et al.'s code,
  github.com/Uooga/Local-Flatness-Regularization, ``loss_function/LFR_loss.py``, re-implemented in
  ``official_lfr.py``) at the same inner steps, eps and lambda: goal <= 1.0x (issue 16);
* LFR vs PGD-AT (``flatplug.training.PGDAT``) at the same inner steps: issue 3's goal <= 1.6x.
  Each LFR inner step is a double backward (input-space Hessian-vector product) where a PGD step
  is one gradient, so the ratio cannot fall below about the HVP / gradient cost ratio (printed by
  ``--breakdown``);
* SAM vs standard training: goal <= 2.1x. Their steps are short, so each sample averages 3 steps.

flatplug's methods get the batch in the layout flatplug's training loop passes to their steps
(channels_last on a CPU where the model accepts it: :func:`flatplug.training.train`); the
official algorithm gets it as its own code does (the contiguous layout).

``--breakdown`` also times the pieces of a step (forward, input gradient, one inner ascent step
with and without frozen weights, the outer objective's pass) to show where the time goes, all on
stock autograd graphs, plus the frozen-weights inner step with the convolutions switched as
flatplug's ascent records them (``flatplug._conv_grad.second_order_convs``: stock autograd's double
backward of a convolution runs an extra convolution over transposed feature maps).

    .venv/bin/python benchmarks/training_steps.py [--device cpu] [--threads 1] [--inner-steps 10] [--breakdown]
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import _common as C
from flatplug._conv_grad import second_order_convs
from flatplug._data import cpu_channels_last
from flatplug.training import LFR, PGDAT, SAM, Standard
from official_lfr import official_lfr_step

GOALS = {("LFR", "official LFR"): 1.0, ("LFR", "PGD-AT"): 1.6, ("SAM", "standard"): 2.1}
LAM = 0.03  # the official CIFAR-10 setting


def stepper(method, model, x, y):
    """A callable running one training step of ``method`` on its own copy of ``model``."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(_repeat: int) -> float:
        model.train()
        return method.step(model, x, y, optimizer).loss

    return step


def official_stepper(model, x, y, *, eps, steps, lam):
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    def step(_repeat: int) -> float:
        return official_lfr_step(model, x, y, optimizer, eps=eps, steps=steps, step_size=2.5 * eps / steps,
                                 lam=lam, generator=generator)

    return step


def breakdown(model, x, y, device, repeats: int) -> list[list[object]]:
    """Median seconds of the pieces of an LFR step, for the profile."""
    model = copy.deepcopy(model).eval()
    params = list(model.parameters())

    def input_grad(create_graph=False):
        xr = x.clone().requires_grad_(True)
        return xr, torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr, create_graph=create_graph)[0]

    def inner_step(frozen: bool, switched: bool = False):
        for p in params:
            p.requires_grad_(not frozen)
        with second_order_convs(model) if switched else nullcontext():
            xr, g = input_grad(create_graph=True)
        torch.autograd.grad(g.abs().sum(), xr)
        for p in params:
            p.requires_grad_(True)

    def outer_pass():
        model.zero_grad()
        xr, g = input_grad(create_graph=True)
        (F.cross_entropy(model(x), y) + LAM * g.abs().flatten(1).sum(1).mean()).backward()

    def weight_grad():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    def forward():
        with torch.no_grad():
            model(x)

    pieces = {"forward": forward, "input gradient": lambda: input_grad(), "weight gradient (PGD-AT's last pass)":
              weight_grad, "inner step (double backward)": lambda: inner_step(False),
              "inner step, weights frozen": lambda: inner_step(True),
              "the same, convolutions switched (flatplug's)": lambda: inner_step(True, switched=True),
              "outer pass (CE + regulariser)": outer_pass}
    cpu: dict[str, list[float]] = {}
    times, _ = C.interleaved({k: (lambda _r, f=f: f()) for k, f in pieces.items()}, repeats, device, cpu=cpu)
    return [C.time_cpu_row(k, times[k], cpu[k]) for k in pieces]


def ratio_line(a: str, b: str, times, cpu) -> str:
    wall = [ta / tb for ta, tb in zip(times[a], times[b])]
    proc = [ta / tb for ta, tb in zip(cpu[a], cpu[b])]
    goal = GOALS[(a, b)]
    return (f"{a} / {b}: median ratio {C.median(wall):.2f}x wall (rounds {min(wall):.2f}-{max(wall):.2f}), "
            f"{C.median(proc):.2f}x CPU (rounds {min(proc):.2f}-{max(proc):.2f}); goal <= {goal}x "
            f"{C.verdict(C.median(wall) <= goal and C.median(proc) <= goal)}")


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=15, n=128, threads=1)
    p.add_argument("--inner-steps", type=int, default=10, help="PGD steps of PGD-AT = ascent steps of both LFRs")
    p.add_argument("--breakdown", action="store_true", help="also time the pieces of an LFR step")
    p.add_argument("--skip-sam", action="store_true", help="only the LFR group")
    args = p.parse_args(argv)
    device = C.setup(args)
    model = C.load_model(args, device)
    x, y = C.load_cifar(args, "test", args.n)
    x, y = x.to(device), y.to(device)
    k, eps = args.inner_steps, 8 / 255
    C.header("one training step: LFR vs official LFR vs PGD-AT, SAM vs standard", args, device,
             parameters=f"{sum(p.numel() for p in model.parameters()):,}",
             settings=f"eps 8/255, {k} inner steps (LFR ascent steps = official ascent steps = PGD steps), "
                      f"lam {LAM}, SAM rho 0.05")
    # flatplug's methods get the batch as flatplug's training loop passes it to their steps (channels_last
    # on a CPU where the model accepts it); the official algorithm gets it as its own code does
    xl = x.contiguous(memory_format=torch.channels_last) if cpu_channels_last(model, x) else x
    groups = [({"LFR": stepper(LFR(eps=eps, steps=k, lam=LAM), model, xl, y),
                "official LFR": official_stepper(model, x, y, eps=eps, steps=k, lam=LAM),
                "PGD-AT": stepper(PGDAT(eps=eps, steps=k), model, xl, y)}, 1,
               [("LFR", "official LFR"), ("LFR", "PGD-AT")])]
    if not args.skip_sam:
        groups.append(({"SAM": stepper(SAM(rho=0.05), model, xl, y), "standard": stepper(Standard(), model, xl, y)},
                       3, [("SAM", "standard")]))
    rows, verdicts = [], []
    for methods, number, pairs in groups:
        cpu: dict[str, list[float]] = {}
        times, _ = C.interleaved(methods, args.repeats, device, number={m: number for m in methods}, cpu=cpu)
        rows += [C.time_cpu_row(f"{m} step", times[m], cpu[m]) for m in methods]
        verdicts += [ratio_line(a, b, times, cpu) for a, b in pairs]
    print(C.table(C.CPU_HEADERS, rows))
    for line in verdicts:
        print(line)
    if args.breakdown:
        print("\nwhere the time of one LFR step goes (one LFR step = inner steps x one inner step + one outer pass):")
        print(C.table(C.CPU_HEADERS, breakdown(model, x, y, device, args.repeats)))


if __name__ == "__main__":
    main()
