"""Score a RobustBench-size model (WideResNet-28-10) end to end and report where the time goes.

The architecture is built from RobustBench's own constructor (the `Standard` CIFAR-10 Linf entry);
weights come from a local checkpoint when one is given and exists, else they are random (the
output says which: timings do not depend on the weights). Images are real CIFAR-10 test images.

Prints seconds for each measure, for PGD-10 and for the whole score, the cost of one
Hessian-vector product relative to one gradient on the same batch (computed both ways
``HessianOperator`` offers: the cached double backward that ``hvp="auto"`` uses, and
``torch.func``'s forward-over-reverse), and peak GPU memory.
Goals on one H100 with n=1000: everything <= 120 s, one HVP <= 2.5x one gradient.

    python benchmarks/gpu_scoring.py --device cuda --n 1000            # the GPU run
    python benchmarks/gpu_scoring.py --device cpu --n 4 --hvp-batch 4 --repeats 3 --lanczos-iters 5 --probes 2  # a CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import robustbench_wide_resnet, sync, table  # noqa: E402

import flatplug as fp  # noqa: E402
from flatplug.hvp import HessianOperator  # noqa: E402
from flatplug.scoring import score  # noqa: E402
from flatplug.sources import load_imagefolder  # noqa: E402


def wide_resnet_28_10(checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    model = robustbench_wide_resnet()
    if checkpoint and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state.get("last", state)) if isinstance(state, dict) else state
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        return model.eval(), f"weights from {checkpoint}"
    return model.eval(), "random weights (no checkpoint given or found; timings do not depend on the weights)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=1000, help="real CIFAR-10 test images")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10" / "test.tar.gz"))
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "cifar10" / "Linf" / "Standard.pt"),
                   help="RobustBench checkpoint of Standard (WideResNet-28-10); random weights if absent")
    p.add_argument("--hvp-batch", type=int, default=128, help="batch for the HVP/gradient ratio")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of the HVP and the gradient")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    p.add_argument("--lanczos-iters", type=int, default=20, help="max Lanczos iterations for the top eigenvalue")
    p.add_argument("--probes", type=int, default=10, help="Hutchinson probes for the trace")
    p.add_argument("--pgd-steps", type=int, default=10)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here; use --device cpu")
    model, weights = wide_resnet_28_10(args.checkpoint)
    model = model.to(device)
    x, y = load_imagefolder(args.data, n=args.n)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; model: WideResNet-28-10 (RobustBench Standard), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {weights}; n = {args.n}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # one HVP against one gradient on the same batch
    batch = (x[: args.hvp_batch].to(device), y[: args.hvp_batch].to(device))
    op = HessianOperator(model, batch, cache_graph=True)
    params = [p for p in model.parameters()]
    v = torch.randn(op.dim, device=device, generator=None)

    def gradient():
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        torch.autograd.grad(loss, params)

    fwd = HessianOperator(model, batch, hvp="forward-over-reverse")
    grad_times, hvp_times, fwd_times = [], [], []
    op.matvec(v)  # builds and caches the gradient graph (a first product)
    fwd.matvec(v)  # torch.func's first call pays one-off costs
    for _ in range(args.repeats):
        sync(device); t = time.perf_counter(); gradient(); sync(device); grad_times.append(time.perf_counter() - t)
        sync(device); t = time.perf_counter(); op.matvec(v); sync(device); hvp_times.append(time.perf_counter() - t)
        sync(device); t = time.perf_counter(); fwd.matvec(v); sync(device); fwd_times.append(time.perf_counter() - t)
    op.release()
    del op, fwd
    ratio = statistics.median(hvp_times) / statistics.median(grad_times)
    fwd_ratio = statistics.median(fwd_times) / statistics.median(grad_times)

    measures = {"relative_flatness": {}, "hessian_eigenvalues": {"k": 1, "max_iter": args.lanczos_iters, "tol": 1e-2},
                "hessian_trace": {"probes": args.probes, "tol": 0.0, "min_probes": min(10, args.probes)},
                "local_flatness": {"steps": 10}}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        frame = score([fp.LoadedModel("wrn-28-10", model, "cifar10", metadata={"source": "bench"})],
                      ("cifar10", x, y), measures=measures, attack={"name": "pgd", "eps": 8 / 255, "steps": args.pgd_steps},
                      store=Path(tmp) / "bench.db", device=str(device), precision=args.precision, quiet=True)
        total = time.perf_counter() - start
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        print(failed[["name", "error"]].to_string(index=False))
        return 1
    rows = [[f"{r['kind']}:{r['name']}", f"{r['seconds']:.2f}", r["details"].get("batch_size", "")]
            for _, r in frame.iterrows()]
    print(table(["row", "seconds", "batch"], rows))
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"
    print(f"whole score: {total:.1f} s (goal on one H100 with n=1000: <= 120 s)")
    print(f"one HVP / one gradient (batch {batch[0].shape[0]}, median of {args.repeats}): {ratio:.2f}x with the cached "
          f"double backward (hvp='auto'; goal <= 2.5x), {fwd_ratio:.2f}x with forward-over-reverse (torch.func)")
    print(f"peak GPU memory: {peak}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
