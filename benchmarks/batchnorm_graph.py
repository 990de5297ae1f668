"""What recording eval-mode BatchNorm gradients in elementwise ops saves: HVPs and local flatness.

flatplug records the first-order gradients it differentiates again with eval-mode BatchNorm layers
switched (``flatplug._bn_grad.second_order_batchnorms``): stock autograd's BatchNorm double backward
hands the convolutions of a channels_last graph NCHW tensors, which oneDNN reorders or runs on its
slow path. This script times the two users of that switch on a WideResNet built by RobustBench's
constructor (random weights: timings do not depend on them) in eval mode, on real CIFAR-10 test
images, with flatplug's recording and with the BatchNorm layers left stock (convolutions still
switched), interleaved:

* one Hessian-vector product of ``HessianOperator`` (cached graph, the default path), and
* one ``local_flatness(model, data, eps=8/255)`` call (defaults otherwise: LFR's ascent, a double
  backward per step).

It prints the medians, the ratios (flatplug's / stock BatchNorm) and the largest difference of
the results (float rounding only: the forward is stock ``F.batch_norm`` either way).

    .venv/bin/python benchmarks/batchnorm_graph.py [--wrn wrn-16-4] [--n 32] [--repeats 5]
"""

from __future__ import annotations

import importlib
import re
import statistics
import sys
from contextlib import nullcontext

import torch

import _common as C
from flatplug._conv_grad import second_order_convs
from flatplug.ext import preserved
from flatplug.hvp import HessianOperator

LF = importlib.import_module("flatplug.measures.local_flatness")  # the module (flatplug.measures re-exports the function)
WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=5, n=32, threads=1)
    p.add_argument("--wrn", default="wrn-16-4", help="wrn-DEPTH-WIDTH (RobustBench's WideResNet constructor)")
    args = p.parse_args()
    match = WRN_NAME.fullmatch(args.wrn)
    if not match:
        sys.exit(f"--wrn: expected wrn-DEPTH-WIDTH (e.g. wrn-16-4, wrn-28-10), got {args.wrn!r}")
    device = C.setup(args)
    x, y = C.load_cifar(args, "test", args.n)
    args.model, args.zoo = args.wrn, "RobustBench's WideResNet constructor, random weights, eval mode"
    C.header("eval-mode BatchNorm graphs: flatplug's vs stock, for HVPs and local flatness", args, device)
    model = C.robustbench_wide_resnet(*map(int, match.groups())).to(device).eval()
    x, y = x.to(device), y.to(device)
    switched_layers = LF.second_order_layers

    def stock_bn(create_graph: bool):
        return second_order_convs(model) if create_graph else nullcontext()

    with preserved(model):
        ops = {"flatplug": HessianOperator(model, (x, y)), "stock BatchNorm": HessianOperator(model, (x, y))}
        ops["stock BatchNorm"]._recording = stock_bn  # type: ignore[method-assign]
        gen = torch.Generator().manual_seed(0)
        vectors = [torch.randn(ops["flatplug"].dim, generator=gen).to(device) for _ in range(args.repeats + 1)]
        for op in ops.values():
            op.matvec(vectors[0])  # builds and keeps the batch's gradient graph

        def flatness(which: str) -> float:
            LF.second_order_layers = switched_layers if which == "flatplug" else second_order_convs
            try:
                return float(LF.local_flatness(model, (x, y), eps=8 / 255, quiet=True).value)
            finally:
                LF.second_order_layers = switched_layers

        methods = {f"HVP, {k}": (lambda r, op=op: op.matvec(vectors[r + 1])) for k, op in ops.items()}
        methods.update({f"local_flatness, {k}": (lambda r, k=k: flatness(k)) for k in ops})
        times, results = C.interleaved(methods, args.repeats, device)
    print(C.table(["call", "median s", "min s", "max s", "runs"],
                  [[k, C.median(t), min(t), max(t), len(t)] for k, t in times.items()]))
    for what in ("HVP", "local_flatness"):
        a, b = times[f"{what}, flatplug"], times[f"{what}, stock BatchNorm"]
        paired = statistics.median(s / t for s, t in zip(a, b))
        ra, rb = results[f"{what}, flatplug"][-1], results[f"{what}, stock BatchNorm"][-1]
        diff = float((ra - rb).norm() / rb.norm()) if what == "HVP" else abs(ra - rb) / abs(rb)
        print(f"{what}: flatplug's / stock BatchNorm graph {C.median(a) / C.median(b):.2f}x (median of per-round "
              f"ratios {paired:.2f}x); results differ by {diff:.1e} (relative)")
    C.footer()


if __name__ == "__main__":
    main()
