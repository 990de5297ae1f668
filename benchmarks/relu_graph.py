"""Hessian-vector products with the ReLUs' gradient recorded with and without its branch of zeros.

Stock autograd records each ReLU's gradient with a derivative path back to the ReLU's output that
only ever carries zeros; every product computes and adds them. ``flatplug._relu_grad`` records
the gradient without that path (the products are equal bit for bit). This script times the two,
and nothing else: four cached operators on the same batch (the convolutions switched in all),
built in the order switched, stock, stock, switched so that neither kind gains from where the
allocator put its graph, timed round-robin. Each round gives one ratio, the switched pair's summed
time over the stock pair's; reported are the medians of those ratios, of wall-clock and process
CPU time, on each of ``--models`` (zoo names, or ``wrn-28-10``: RobustBench's constructor, random
weights, ``--wrn-n`` images).

    .venv/bin/python benchmarks/relu_graph.py [--models resnet4b oval_wide] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import _common as C
from flatplug._conv_grad import second_order_convs
from flatplug.ext import preserved
from flatplug.hvp import HessianOperator

WRN = "wrn-28-10"


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, device: torch.device) -> dict:
    with preserved(model):
        ops = {}
        for label in ("switched 1", "stock 1", "stock 2", "switched 2"):
            op = ops[label] = HessianOperator(model, (x, y), hvp="double-backward", cache_graph=True)
            if label.startswith("stock"):
                op._recording = lambda create_graph: second_order_convs(model)  # type: ignore[method-assign]
            op.matvec(torch.zeros(op.dim, device=device))  # builds the graph now, in this order
        v = torch.randn(ops["stock 1"].dim, generator=torch.Generator().manual_seed(0)).to(device)
        products = [op.matvec(v) for op in ops.values()]
        equal = all(torch.equal(products[0], p) for p in products[1:])
        cpu: dict[str, list[float]] = {}
        times, _ = C.interleaved({label: (lambda r, op=op: op.matvec(v)) for label, op in ops.items()},
                                 repeats, device, warmup=True, cpu=cpu)
        del ops, products
    return {"times": times, "cpu": cpu, "equal": equal}


def pair_ratio(samples: dict[str, list[float]]) -> float:
    """Median over rounds of (switched 1 + switched 2) / (stock 1 + stock 2)."""
    return statistics.median((a + b) / (c + d) for a, b, c, d in zip(
        samples["switched 1"], samples["switched 2"], samples["stock 1"], samples["stock 2"]))


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=30, n=128, threads=1)
    p.add_argument("--models", nargs="+", default=["resnet4b", "oval_wide"],
                   help=f"zoo model names and/or {WRN!r} (RobustBench's constructor, random weights)")
    p.add_argument("--wrn-n", type=int, default=4, help=f"batch size for {WRN} (slow on a CPU)")
    args = p.parse_args()
    device = C.setup(args)
    C.header("HVP with switched ReLUs vs stock ReLUs (convolutions switched in both)", args, device)
    for name in args.models:
        if name == WRN:
            model, n = C.robustbench_wide_resnet().to(device).eval(), args.wrn_n
        else:
            model, n = C.load_model(argparse.Namespace(**{**vars(args), "model": name}), device), args.n
        x, y = C.load_cifar(args, "test", n)
        res = measure(model, x.to(device), y.to(device), args.repeats, device)
        t = res["times"]
        each = ", ".join(f"{label} {C.median(s):.4g} s" for label, s in t.items())
        print(f"{name} (batch {n}), median seconds per product: {each}; switched / stock: median ratio "
              f"{pair_ratio(t):.3f} wall, {pair_ratio(res['cpu']):.3f} CPU; products equal bit for bit: {res['equal']}")
    C.footer()


if __name__ == "__main__":
    main()
