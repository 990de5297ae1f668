"""``HessianOperator._flat``: one copy per gradient into its slot vs ``reshape(-1)`` + ``cat`` (run by hand).

A channels_last graph's weight gradients come in channels_last layout, so ``reshape(-1)`` copies
each one before ``cat`` copies it again. This times both ways of flattening WideResNet-28-10's
gradient shapes (36.5M parameters, the 4-D ones channels_last), interleaved, one thread.

    .venv/bin/python notes/flat_copy.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as C  # noqa: E402
from flatplug.hvp import HessianOperator  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    op = HessianOperator(C.robustbench_wide_resnet().eval(), (torch.rand(2, 3, 32, 32), torch.tensor([0, 1])))
    grads = [torch.randn(p.shape).contiguous(memory_format=torch.channels_last) if p.dim() == 4
             else torch.randn(p.shape) for p in op.params]

    def reshape_then_cat(ts):
        return torch.cat([t.reshape(-1).to(op.dtype) for t in ts])

    ways = {"reshape(-1) + cat (before)": reshape_then_cat, "copy into slots (_flat)": op._flat}
    assert torch.equal(reshape_then_cat(grads), op._flat(grads))
    times: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(15):
        for name in list(ways)[r % 2:] + list(ways)[:r % 2]:
            start = time.perf_counter()
            ways[name](grads)
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"{name:28s} median {statistics.median(t):.4f} s")
    before, after = times["reshape(-1) + cat (before)"], times["copy into slots (_flat)"]
    print(f"_flat / before: {statistics.median(after) / statistics.median(before):.2f}x "
          f"(median of per-round ratios {statistics.median(a / b for a, b in zip(after, before)):.2f}x)")


if __name__ == "__main__":
    main()
