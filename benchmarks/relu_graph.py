"""Hessian-vector products with the ReLUs' gradient recorded with and without its branch of zeros.

Stock autograd records each ReLU's gradient with a derivative path back to the ReLU's output that
only ever carries zeros; every product computes and adds them. ``flatplug._relu_grad`` records
the gradient without that path (the products are equal bit for bit). This script times the two,
and nothing else, in alternating pairs (two cached operators on the same batch, the convolutions
switched in both), and reports the median of the per-pair ratios, of wall-clock and process CPU
time, on each of ``--models`` (zoo names, or ``wrn-28-10``: RobustBench's constructor, random
weights, ``--wrn-n`` images).

    .venv/bin/python benchmarks/relu_graph.py [--models resnet4b oval_wide] [--repeats 40]
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
        switched = HessianOperator(model, (x, y), hvp="double-backward", cache_graph=True)
        stock = HessianOperator(model, (x, y), hvp="double-backward", cache_graph=True)
        stock._recording = lambda create_graph: second_order_convs(model)  # type: ignore[method-assign]
        v = torch.randn(switched.dim, generator=torch.Generator().manual_seed(0)).to(device)
        equal = torch.equal(switched.matvec(v), stock.matvec(v))  # also builds both graphs
        cpu: dict[str, list[float]] = {}
        times, _ = C.interleaved({"switched": lambda r: switched.matvec(v), "stock": lambda r: stock.matvec(v)},
                                 repeats, device, warmup=True, cpu=cpu)
        del switched, stock
    return {"times": times, "cpu": cpu, "equal": equal}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=40, n=128, threads=1)
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
        t, c = res["times"], res["cpu"]
        wall = statistics.median(a / b for a, b in zip(t["switched"], t["stock"]))
        cpu = statistics.median(a / b for a, b in zip(c["switched"], c["stock"]))
        print(f"{name} (batch {n}): switched {C.median(t['switched']):.4g} s, stock {C.median(t['stock']):.4g} s per "
              f"product; switched / stock: median per-pair ratio {wall:.3f} wall, {cpu:.3f} CPU; products equal bit "
              f"for bit: {res['equal']}")
    C.footer()


if __name__ == "__main__":
    main()
