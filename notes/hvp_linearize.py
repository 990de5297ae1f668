"""Is there a cheaper Hessian-vector product than the kept graph's double backward? (run by hand)

Issue 16 asks for one HVP <= 2.0x one gradient on resnet4b; the kept graph's double backward is at
about 2x, the count of its convolutions (notes/perf.md). This script times, interleaved on the
same batch (128 real CIFAR-10 test images, channels_last, one thread):

* one gradient (forward + backward, as ``benchmarks/hvp_cost.py`` times it);
* flatplug's product (``HessianOperator``, cached graph: the default path);
* ``torch.func.linearize`` of ``torch.func.grad`` of the loss: forward-over-reverse with the
  primal computation done once and cached, so each product runs only the tangent computation
  (an FX graph); and the same function compiled by ``torch.compile`` (Inductor: fused elementwise
  operations, planned buffers).

It prints the medians, each product's ratio to the gradient and the products' agreement.

    .venv/bin/python notes/hvp_linearize.py [--repeats 12] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as C  # noqa: E402
from flatplug.ext import preserved  # noqa: E402
from flatplug.hvp import HessianOperator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (about 35 s to compile)")
    args = p.parse_args()
    torch.set_num_threads(1)
    src = argparse.Namespace(zoo=str(C.DEFAULT_ZOO), data=str(C.DEFAULT_DATA), model="resnet4b")
    model = C.load_model(src, torch.device("cpu"))
    x, y = C.load_cifar(src, "test", 128)
    x = x.contiguous(memory_format=torch.channels_last)  # the operator's layout for this model on a CPU
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    with preserved(model):
        op = HessianOperator(model, (x, y), cache_graph=True)
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
        reference = op.matvec(v)
        tangents = dict(zip(names, op._split(v)))
        primals = {n: p.detach() for n, p in model.named_parameters()}

        def loss(ps):
            return F.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

        start = time.perf_counter()
        _, linearized = torch.func.linearize(torch.func.grad(loss), primals)
        print(f"torch.func.linearize: {time.perf_counter() - start:.1f} s to trace")
        methods = {
            "gradient (forward + backward)": lambda: torch.autograd.grad(F.cross_entropy(model(x), y), params),
            "HVP, flatplug (kept graph)": lambda: op.matvec(v),
            "HVP, torch.func.linearize": lambda: linearized(tangents),
        }
        if not args.no_compile:
            compiled = torch.compile(linearized)
            start = time.perf_counter()
            compiled(tangents)
            print(f"torch.compile: {time.perf_counter() - start:.1f} s to compile")
            methods["HVP, linearize + torch.compile"] = lambda: compiled(tangents)
        for name, fn in methods.items():
            if name.startswith("HVP, ") and "flatplug" not in name:
                out = fn()
                flat = torch.cat([out[n].reshape(-1) for n in names])
                print(f"{name}: relative difference to flatplug's product {float((flat - reference).norm() / reference.norm()):.1e}")
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(2):
            for fn in methods.values():
                fn()
        for r in range(args.repeats):
            order = list(methods)[r % len(methods):] + list(methods)[:r % len(methods)]
            for name in order:
                start = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - start)
    grad = statistics.median(times["gradient (forward + backward)"])
    for name, t in times.items():
        print(f"{name:34s} median {statistics.median(t):.4f} s   / gradient {statistics.median(t) / grad:.2f}x")
    flatplug = statistics.median(times["HVP, flatplug (kept graph)"])
    for name in [k for k in times if k.startswith("HVP, ") and "flatplug" not in k]:
        print(f"{name} / flatplug's product: {statistics.median(times[name]) / flatplug:.2f}x")


if __name__ == "__main__":
    main()
