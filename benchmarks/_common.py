"""Shared pieces of the benchmark scripts: arguments, the real model and data, timing, printing.

The benchmarks read the real pretrained zoo and the real CIFAR-10 archives from ``../shared``
(beside the project root) unless ``--zoo`` / ``--data`` point elsewhere. Timings are wall-clock
seconds of whole calls, synchronised on CUDA; competing methods run interleaved (alternating
which goes first) so that a change in machine load hits all of them alike, and the figures
reported are medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_ZOO = SHARED / "models" / "zoo.json"
DEFAULT_DATA = SHARED / "data" / "cifar10"


def robustbench_wide_resnet(depth: int = 28, widen_factor: int = 10) -> nn.Module:
    """RobustBench's own WideResNet (the ``Standard`` CIFAR-10 architecture at 28-10), seeded weights.

    The architecture module is loaded from the installed ``robustbench`` distribution by its file,
    without running the package's ``__init__``: that imports ``autoattack`` and ``pkg_resources``,
    which the architecture does not need and a bare GPU machine may lack (only the ``robustbench``
    wheel is needed there). The class is RobustBench's, unchanged.
    """
    import importlib.util
    from importlib import metadata

    try:
        file = Path(str(metadata.distribution("robustbench").locate_file(
            "robustbench/model_zoo/architectures/wide_resnet.py")))
    except metadata.PackageNotFoundError:
        sys.exit("this benchmark builds a WideResNet with RobustBench's constructor: install robustbench "
                 "(make setup, or adapters/robustbench)")
    if not file.is_file():
        sys.exit(f"robustbench is installed but {file} is missing: reinstall robustbench 1.1.1")
    spec = importlib.util.spec_from_file_location("_robustbench_wide_resnet", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.WideResNet(depth=depth, widen_factor=widen_factor)


def wide_resnet_on_cifar(n: int, threads: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The notes' large-model case: RobustBench's WideResNet-28-10 (seeded random weights, eval
    mode) and the first ``n`` real CIFAR-10 test images from ``../shared``, with ``threads`` torch
    threads; prints where flatplug was imported from (the notes compare two checkouts)."""
    import flatplug
    from flatplug.sources import load_imagefolder

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    print(f"flatplug from {Path(flatplug.__file__).parent}; torch {torch.__version__}, {threads} thread(s)")
    model = robustbench_wide_resnet().eval()
    data = load_imagefolder(DEFAULT_DATA / "test.tar.gz", n=n)
    return model, (data.x, data.y)


def parser(description: str, *, repeats: int, n: int, threads: int | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes; scripts add their own. ``threads``: the default of
    ``--threads`` (None: torch's own choice)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to run on")
    p.add_argument("--repeats", type=int, default=repeats, help="timed runs of each method (median reported)")
    p.add_argument("--n", type=int, default=n, help="number of real CIFAR-10 test images in the batch")
    p.add_argument("--model", default="resnet4b", help="model name in the zoo manifest")
    p.add_argument("--zoo", default=str(DEFAULT_ZOO), help="zoo manifest (zoo.json)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding CIFAR-10 train.tar.gz and test.tar.gz")
    p.add_argument("--threads", type=int, default=threads, help="torch CPU threads; 0 or None: torch's own choice")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Validate the common options and apply them; returns the device."""
    if args.repeats < 1:
        sys.exit(f"--repeats: expected a positive integer, got {args.repeats}")
    if args.n < 1:
        sys.exit(f"--n: expected a positive integer, got {args.n}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here; use --device cpu")
    if args.threads is not None and args.threads < 0:
        sys.exit(f"--threads: expected a non-negative integer (0: torch's own choice), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    for what, path in (("--zoo", args.zoo), ("--data", args.data)):
        if not Path(path).exists():
            sys.exit(f"{what}: {path} does not exist; point it at the shared zoo manifest / CIFAR-10 folder")
    return device


def header(title: str, args: argparse.Namespace, device: torch.device, **extra: object) -> None:
    """Print what ran where: device, torch version, threads, machine load, model, batch size."""
    print(f"== {title}")
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    else:
        dev += f" ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"
    print(f"device: {dev}; torch {torch.__version__}; threads {torch.get_num_threads()}; load average {load_average()}")
    print(f"model: {args.model} ({args.zoo}); n = {args.n}; repeats = {args.repeats}")
    for key, value in extra.items():
        print(f"{key}: {value}")


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def footer() -> None:
    """Print the machine load at the end of a run (the header prints it at the start)."""
    print(f"load average at the end: {load_average()} ({os.cpu_count()} logical cores)")


def load_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The real pretrained zoo model (takes [0, 1] images), in eval mode on ``device``."""
    from flatplug.sources import ZooSource

    return ZooSource(args.zoo).load(args.model, device=device).module.eval()


def load_cifar(args: argparse.Namespace, split: str, n: int, seed: int = 0):
    """``n`` real CIFAR-10 images of ``split`` ("train"/"test"), class-balanced, as CPU (x, y)."""
    from flatplug.sources import load_imagefolder

    data = load_imagefolder(Path(args.data) / f"{split}.tar.gz", n=n, seed=seed, split=split)
    return data.x, data.y


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_both(fn: Callable[[], object], device: torch.device, number: int = 1) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds per call of ``fn`` (CUDA work included in the wall
    time), averaged over ``number`` back-to-back calls, and the last result.

    On a CPU shared with other work the CPU time is the steadier figure: it leaves out the time
    this process waited for a core (it counts all of its threads, so it is the work done, not the
    time taken, when several threads run).
    """
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(number):
        out = fn()
    sync(device)
    return (time.perf_counter() - wall) / number, (time.process_time() - cpu) / number, out


def timed(fn: Callable[[], object], device: torch.device, number: int = 1) -> tuple[float, object]:
    """Wall-clock seconds per call of ``fn`` (CUDA work included), averaged over ``number``
    back-to-back calls (for calls too short to time one by one), and the last result."""
    wall, _, out = timed_both(fn, device, number)
    return wall, out


def interleaved(methods: dict[str, Callable[[int], object]], repeats: int, device: torch.device,
                warmup: bool = True, number: dict[str, int] | None = None,
                cpu: dict[str, list[float]] | None = None,
                ) -> tuple[dict[str, list[float]], dict[str, list[object]]]:
    """Run each method ``repeats`` times, round-robin with a rotating start; times and results.

    Each method is called with the repeat index (a seed). With ``warmup`` every method runs once
    untimed first (allocator, thread pools, lazy imports). ``number[name]``: back-to-back calls
    per timed sample for a method too quick to time one call at a time (default 1). ``cpu``: a
    dict that receives the process CPU seconds of each sample, by method, when given.
    """
    number = number or {}
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list[object]] = {name: [] for name in names}
    if cpu is not None:
        cpu.update({name: [] for name in names})
    if warmup:
        for name in names:
            methods[name](0)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            seconds, cpu_seconds, out = timed_both(lambda: methods[name](r), device, number.get(name, 1))
            times[name].append(seconds)
            results[name].append(out)
            if cpu is not None:
                cpu[name].append(cpu_seconds)
    return times, results


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table (floats to 4 significant digits unless already strings)."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def time_row(name: str, seconds: Sequence[float]) -> list[object]:
    return [name, median(seconds), min(seconds), max(seconds), len(seconds)]


TIME_HEADERS = ("method", "median s", "min s", "max s", "runs")
CPU_HEADERS = (*TIME_HEADERS, "median CPU s")


def time_cpu_row(name: str, seconds: Sequence[float], cpu_seconds: Sequence[float]) -> list[object]:
    """``time_row`` plus the median process CPU seconds (see ``timed_both``)."""
    return [*time_row(name, seconds), median(cpu_seconds)]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"
