"""Cost of one Hessian-vector product relative to one gradient, on the same batch and model.

A gradient here is one forward and one backward pass of the mean cross-entropy over the batch
w.r.t. all parameters (``torch.autograd.grad``). A Hessian-vector product is
``flatplug.hvp.HessianOperator.matvec`` (Pearlmutter's double backward) of the same loss:

* ``cache_graph=True``: the operator keeps the batch's first-order graph (built once, on the
  first product, and reported on its own line), so each further product is one double backward;
* ``cache_graph=False``: every product does its own forward, backward with ``create_graph`` and
  double backward, as it must when the data are streamed in several batches.

All three are timed interleaved, ``--repeats`` times, each sample averaging ``--number`` calls,
on the real pretrained ``resnet4b`` of the shared zoo and real CIFAR-10 test images. Reported:
the median seconds and the ratios of the medians (also the median of the ratios within a round).

On a CPU the script runs torch with one thread by default (``--threads 0``: torch's own choice):
on a small machine shared with other work, torch's default threads oversubscribe the cores and
make every timing several times slower and far noisier; both methods always get the same threads.

    .venv/bin/python benchmarks/hvp_cost.py [--device cpu] [--n 128] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

import _common as C
from flatplug.ext import preserved
from flatplug.hvp import HessianOperator

GOAL = 3.0


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=20, n=128, threads=1)
    p.add_argument("--number", type=int, default=1, help="back-to-back calls averaged in each timed sample")
    args = p.parse_args()
    device = C.setup(args)
    if args.number < 1:
        raise SystemExit(f"--number: expected a positive integer, got {args.number}")

    model = C.load_model(args, device)
    x, y = C.load_cifar(args, "test", args.n)
    x, y = x.to(device), y.to(device)
    params = list(model.parameters())
    dim = sum(p.numel() for p in params)
    C.header("one Hessian-vector product vs one gradient", args, device,
             loss=f"mean cross-entropy over the batch, w.r.t. all {dim} parameters; --number {args.number}")

    gen = torch.Generator().manual_seed(0)
    with preserved(model):
        cached = HessianOperator(model, (x, y), cache_graph=True)
        streamed = HessianOperator(model, (x, y), cache_graph=False)
        vectors = [torch.randn(dim, generator=gen).to(device) for _ in range(args.repeats + 1)]

        def gradient(r: int) -> torch.Tensor:
            return torch.autograd.grad(F.cross_entropy(model(x), y), params)[0]

        # warm-up (the process's first double backward pays one-off costs), then the cached operator's
        # first product, which builds the batch's gradient graph and keeps it
        for _ in range(2):
            gradient(0)
            streamed.matvec(vectors[0])
        build, build_cpu, _ = C.timed_both(lambda: cached.matvec(vectors[0]), device)
        # the two operators agree: a check that both compute the same product
        hv = cached.matvec(vectors[1])
        diff = (hv - streamed.matvec(vectors[1])).norm() / hv.norm()

        methods = {
            "gradient (forward + backward)": gradient,
            "HVP, cached graph (cache_graph=True)": lambda r: cached.matvec(vectors[r]),
            "HVP, no cached graph (cache_graph=False)": lambda r: streamed.matvec(vectors[r]),
        }
        cpu: dict[str, list[float]] = {}
        times, _ = C.interleaved(methods, args.repeats, device, number=dict.fromkeys(methods, args.number), cpu=cpu)
        del cached, streamed

    names = list(times)
    grad_t = times[names[0]]
    print()
    print("timings (wall-clock seconds per call):")
    rows = [C.time_cpu_row(n, t, cpu[n]) for n, t in times.items()]
    rows.append(["first cached HVP (builds the graph once)", build, build, build, 1, build_cpu])
    print(C.table(C.CPU_HEADERS, rows))
    print(f"cached and streamed products agree: relative difference {float(diff):.1e}")
    for name in names[1:]:
        ratio = C.median(times[name]) / C.median(grad_t)
        paired = statistics.median(h / g for h, g in zip(times[name], grad_t))
        cpu_ratio = C.median(cpu[name]) / C.median(cpu[names[0]])
        print(f"{name} / gradient: {ratio:.2f}x (median of per-round ratios {paired:.2f}x; CPU time "
              f"{cpu_ratio:.2f}x; goal <= {GOAL:.0f}x: {C.verdict(ratio <= GOAL)})")


if __name__ == "__main__":
    main()
