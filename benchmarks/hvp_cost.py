"""Cost of one Hessian-vector product relative to one gradient: double backward vs forward-over-reverse.

A gradient here is one forward and one backward pass of the mean cross-entropy over the batch
w.r.t. all parameters (``torch.autograd.grad``). A Hessian-vector product is
``flatplug.hvp.HessianOperator.matvec`` of the same loss, computed four ways:

* ``hvp="double-backward"``, ``cache_graph=True`` (what ``hvp="auto"`` does on one batch): the
  batch's first-order graph is built once (on the first product, reported on its own line) and
  kept, so each product is one double backward (Pearlmutter's reverse-over-reverse);
* the same with the stock autograd graph (``flatplug._second_order.second_order_layers``
  switched off), to show what recording the convolutions and BatchNorm layers with fast
  derivatives saves; on a model with BatchNorm also with only the BatchNorm switch off (the
  convolutions still switched), to show that switch's share;
* ``hvp="double-backward"``, ``cache_graph=False``: every product does its own forward, backward
  with ``create_graph`` and double backward, as when the data stream in several batches;
* ``hvp="forward-over-reverse"``: ``torch.func.jvp`` of ``torch.func.grad`` of the loss as a
  function of the parameters (``functional_call``); nothing can be kept between products.

The gradient is computed on the batch in the layout the operator uses (channels_last for a
convolutional model on a CPU, where oneDNN is faster on it), so both sides get the faster layout.
All are timed interleaved, ``--repeats`` times, on each of ``--models``: the real pretrained
``resnet4b`` of the shared zoo, and a WideResNet-28-10 built by RobustBench's constructor (as
``benchmarks/gpu_scoring.py`` builds it; random weights: timings do not depend on them) on a
smaller batch (``--wrn-n``) since a CPU is slow on it. Any ``wrn-DEPTH-WIDTH`` (``wrn-16-4``) builds
that WideResNet with the same constructor. Images are real CIFAR-10 test images.
Reported: median seconds, the ratios of the medians to the gradient (and the median of the
per-round ratios), and which way of computing a product is the faster on each model.

On a CPU the script runs torch with one thread by default (``--threads 0``: torch's own choice).

    .venv/bin/python benchmarks/hvp_cost.py [--device cpu] [--n 128] [--repeats 10] [--threads 1]
    .venv/bin/python benchmarks/hvp_cost.py --models resnet4b            # resnet4b only (faster)
    .venv/bin/python benchmarks/hvp_cost.py --models wrn-16-4 --wrn-n 32 --wrn-repeats 9  # a BatchNorm model
"""

from __future__ import annotations

import re
import statistics
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import _common as C
from flatplug._conv_grad import second_order_convs
from flatplug.ext import preserved
from flatplug.hvp import HessianOperator

GOAL = 2.0  # one HVP (the default path) / one gradient on resnet4b
STOCK = "HVP double backward, cached stock autograd graph"
STOCK_BN = "HVP double backward, cached graph, BatchNorm graph stock"
WRN = "wrn-28-10"
WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")


def wide_resnet(name: str, device: torch.device) -> torch.nn.Module:
    depth, width = map(int, WRN_NAME.fullmatch(name).groups())
    return C.robustbench_wide_resnet(depth, width).to(device).eval()


def measure(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int,
            device: torch.device) -> dict:
    params = list(model.parameters())
    dim = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(0)
    with preserved(model):
        ops = {
            "HVP double backward, cached graph (default)": HessianOperator(model, (x, y), hvp="double-backward",
                                                                         cache_graph=True),
            STOCK: HessianOperator(model, (x, y), hvp="double-backward", cache_graph=True),
            "HVP double backward, no cached graph": HessianOperator(model, (x, y), hvp="double-backward",
                                                                 cache_graph=False),
            "HVP forward-over-reverse (torch.func)": HessianOperator(model, (x, y), hvp="forward-over-reverse"),
        }
        ops[STOCK]._recording = lambda create_graph: nullcontext()  # type: ignore[method-assign]
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            ops[STOCK_BN] = HessianOperator(model, (x, y), hvp="double-backward", cache_graph=True)
            ops[STOCK_BN]._recording = (  # type: ignore[method-assign]
                lambda create_graph: second_order_convs(model) if create_graph else nullcontext())
        xg = next(ops[STOCK]._iter())[0]  # the batch in the operator's layout
        vectors = [torch.randn(dim, generator=gen).to(device) for _ in range(repeats + 1)]

        def gradient(r: int) -> None:
            torch.autograd.grad(F.cross_entropy(model(xg), y), params)

        # warm-up (the first double backward and the first torch.func call pay one-off costs); then the
        # cached operator's first product, which builds the batch's gradient graph and keeps it
        gradient(0)
        for label, op in ops.items():
            if "cached graph (default)" not in label:
                op.matvec(vectors[0])
        build, build_cpu, _ = C.timed_both(lambda: ops["HVP double backward, cached graph (default)"].matvec(vectors[0]),
                                           device)
        products = {label: op.matvec(vectors[1]) for label, op in ops.items()}
        ref = products["HVP double backward, cached graph (default)"]
        agree = max(float((p - ref).norm() / ref.norm()) for p in products.values())
        methods = {"gradient (forward + backward)": gradient}
        methods.update({label: (lambda r, op=op: op.matvec(vectors[r])) for label, op in ops.items()})
        cpu: dict[str, list[float]] = {}
        times, _ = C.interleaved(methods, repeats, device, warmup=False, cpu=cpu)
        fell_back = [label for label, op in ops.items() if op.hvp != ("forward-over-reverse" if "forward" in label
                                                                    else "double-backward")]
        del ops, products
    return {"name": name, "dim": dim, "n": x.shape[0], "times": times, "cpu": cpu, "build": build,
            "build_cpu": build_cpu, "agree": agree, "fell_back": fell_back}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=10, n=128, threads=1)
    p.add_argument("--models", nargs="+", default=["resnet4b", WRN],
                   help=f"zoo model names and/or {WRN!r} or any wrn-DEPTH-WIDTH (RobustBench's constructor, "
                        "random weights)")
    p.add_argument("--wrn-n", type=int, default=4, help="batch size for the WideResNets (slow on a CPU)")
    p.add_argument("--wrn-repeats", type=int, default=3, help="timed repeats for the WideResNets")
    args = p.parse_args()
    device = C.setup(args)
    C.header("one Hessian-vector product vs one gradient: double backward vs forward-over-reverse", args, device,
             loss="mean cross-entropy over the batch w.r.t. all parameters")

    results = []
    for name in args.models:
        if WRN_NAME.fullmatch(name):
            model = wide_resnet(name, device)
            n, repeats = args.wrn_n, args.wrn_repeats
        else:
            model = C.load_model(argparse_with(args, name), device)
            n, repeats = args.n, args.repeats
        x, y = C.load_cifar(args, "test", n)
        results.append(measure(name, model, x.to(device), y.to(device), repeats, device))
        del model

    for res in results:
        times, cpu = res["times"], res["cpu"]
        names = list(times)
        grad_t = times[names[0]]
        print()
        print(f"{res['name']}: {res['dim']} parameters, batch {res['n']} (wall-clock seconds per call):")
        rows = [C.time_cpu_row(k, t, cpu[k]) for k, t in times.items()]
        rows.append(["first cached HVP (builds the graph once)", res["build"], res["build"], res["build"], 1,
                     res["build_cpu"]])
        print(C.table(C.CPU_HEADERS, rows))
        print(f"all ways give the same product: largest relative difference {res['agree']:.1e}")
        if res["fell_back"]:
            print(f"NOTE: fell back to the double backward: {res['fell_back']}")
        ratios = {}
        for name in names[1:]:
            ratios[name] = C.median(times[name]) / C.median(grad_t)
            paired = statistics.median(h / g for h, g in zip(times[name], grad_t))
            cpu_ratio = C.median(cpu[name]) / C.median(cpu[names[0]])
            goal = ""
            if res["name"] == "resnet4b" and "(default)" in name:
                goal = f"; goal <= {GOAL:.1f}x: {C.verdict(ratios[name] <= GOAL)}"
            print(f"  {name} / gradient: {ratios[name]:.2f}x (median of per-round ratios {paired:.2f}x; "
                  f"CPU time {cpu_ratio:.2f}x{goal})")
        default = "HVP double backward, cached graph (default)"
        for other, what in ((STOCK, "the whole stock graph"), (STOCK_BN, "the stock BatchNorm graph")):
            if other in times:
                paired = statistics.median(d / o for d, o in zip(times[default], times[other]))
                print(f"  per product, flatplug's graph / {what}: {C.median(times[default]) / C.median(times[other]):.2f}x"
                      f" (median of per-round ratios {paired:.2f}x)")
        db, fr = ratios["HVP double backward, no cached graph"], ratios["HVP forward-over-reverse (torch.func)"]
        print(f"  per product without a kept graph, the faster is {'forward-over-reverse' if fr < db else 'the double backward'}"
              f" ({min(db, fr):.2f}x vs {max(db, fr):.2f}x); with one batch the cached double backward "
              f"({ratios['HVP double backward, cached graph (default)']:.2f}x) is what hvp='auto' uses")
    C.footer()


def argparse_with(args, model: str):
    """``args`` with ``--model`` replaced (``C.load_model`` reads it)."""
    import argparse

    return argparse.Namespace(**{**vars(args), "model": model})


if __name__ == "__main__":
    main()
