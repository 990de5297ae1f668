"""Seconds of each scoring row with the default measures on real data (run by hand).

``fp.score`` of the shared zoo's ``resnet4b`` on ``--n`` real CIFAR-10 test images, default
measures and the default attack, CPU batch 128 (so several batches), one torch thread, into a
throw-away store; prints each row's own seconds and the whole call's. Used to see where scoring
spends its time and what a change saved (run it at two commits).

    .venv/bin/python notes/score_rows.py [--n 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as C  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    import flatplug as fp
    from flatplug.sources import ZooSource

    print(f"flatplug from {Path(fp.__file__).parent}")
    src = argparse.Namespace(zoo=str(C.DEFAULT_ZOO), data=str(C.DEFAULT_DATA), model="resnet4b")
    x, y = C.load_cifar(src, "test", args.n)
    loaded = ZooSource(src.zoo).load("resnet4b")
    rows: dict[str, list[float]] = {}
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            start = time.perf_counter()
            frame = fp.score([loaded], ("cifar10", x, y), store=Path(tmp) / f"run{r}.db", device="cpu",
                             batch_size=128, quiet=True)
            totals.append(time.perf_counter() - start)
            for kind, name, seconds in zip(frame["kind"], frame["name"], frame["seconds"]):
                rows.setdefault(f"{kind}:{name}", []).append(float(seconds))
    for key, seconds in rows.items():
        print(f"{key:30s} median {statistics.median(seconds):.3f} s")
    print(f"{'whole fp.score call':30s} median {statistics.median(totals):.3f} s  ({args.repeats} runs, n = {args.n})")


if __name__ == "__main__":
    main()
