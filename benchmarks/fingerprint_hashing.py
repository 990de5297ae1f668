"""Content fingerprints must not dominate a scoring run: hashing times for a 10,000-image archive and a 150 MB checkpoint.

Goal (issue 11): fingerprint the 10,000-image CIFAR-10 test archive and a 150 MB checkpoint in a
few seconds, and a second time (same path, size and mtime) from the cache. Printed, side by side
in one run, medians over ``--repeats``:

* the archive: SHA-256 of its bytes (cold), decoding all its images (what scoring does anyway),
  and the data fingerprint of the decoded samples (``flatplug.sources.fingerprint.data_fingerprint``);
* a 150 MB checkpoint (a state_dict of ``--megabytes`` of float32 tensors, written to a temporary
  folder): ``file_sha256`` cold (empty caches), ``file_sha256`` cached, ``torch.load`` of the same
  file for scale, and the fingerprint of the loaded module's parameters (an in-memory model).

    python benchmarks/fingerprint_hashing.py                       # defaults: all 10,000 images, 150 MB
    python benchmarks/fingerprint_hashing.py --n 2000 --megabytes 50 --repeats 2
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_SECONDS = 5.0  # "a few seconds"


def _fresh_caches(folder: Path) -> None:
    """Empty the in-memory and on-disk fingerprint caches (the on-disk one lives in FLATPLUG_CACHE)."""
    from flatplug.sources.fingerprint import clear_cache

    clear_cache(disk=True)


def _checkpoint(folder: Path, megabytes: int) -> tuple[Path, nn.Module]:
    """A state_dict of ``megabytes`` of float32 weights in 4 MB layers, saved with torch.save."""
    per_layer = 1024 * 1024  # floats: 4 MB
    layers = max(1, megabytes // 4)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024, bias=False) for _ in range(layers)])
    path = folder / "checkpoint.pt"
    torch.save(model.state_dict(), path)
    assert sum(p.numel() for p in model.parameters()) == layers * per_layer
    return path, model


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=3, n=10_000)
    p.add_argument("--megabytes", type=int, default=150, help="size of the synthetic checkpoint")
    args = p.parse_args(argv)
    args.device = "cpu"
    C.setup(args)
    folder = Path(tempfile.mkdtemp(prefix="flatplug-hash-bench-"))
    os.environ["FLATPLUG_CACHE"] = str(folder)
    from flatplug.sources import load_imagefolder
    from flatplug.sources.fingerprint import data_fingerprint, file_sha256, module_fingerprint

    archive = Path(args.data) / "test.tar.gz"
    args.model = f"(none: {args.megabytes} MB synthetic state_dict)"
    C.header("fingerprint hashing: archive and checkpoint", args, torch.device("cpu"),
             archive=f"{archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    ckpt, model = _checkpoint(folder, args.megabytes)
    print(f"checkpoint: {ckpt.stat().st_size / 1e6:.1f} MB")

    rows, times = [], {}

    def sample(name, fn, before=None):
        got = []
        for _ in range(args.repeats):
            if before:
                before()
            start = time.perf_counter()
            out = fn()
            got.append(time.perf_counter() - start)
        times[name] = got
        rows.append(C.time_row(name, got))
        return out

    sample("archive sha256 (cold)", lambda: file_sha256(archive), lambda: _fresh_caches(folder))
    x, y = sample(f"decode {args.n} images", lambda: load_imagefolder(archive, n=args.n))[:2]
    sample(f"data fingerprint of {len(y)} images", lambda: data_fingerprint(x, y))
    sample("checkpoint sha256 (cold)", lambda: file_sha256(ckpt), lambda: _fresh_caches(folder))
    file_sha256(ckpt)
    sample("checkpoint sha256 (cached)", lambda: file_sha256(ckpt))
    _fresh_caches(folder)
    file_sha256(ckpt)
    from flatplug.sources.fingerprint import clear_cache

    sample("checkpoint sha256 (disk cache, new process)", lambda: file_sha256(ckpt), clear_cache)
    sample("torch.load of the checkpoint", lambda: torch.load(ckpt, weights_only=True))
    sample("module fingerprint (in-memory model)", lambda: module_fingerprint(model))
    print(C.table(C.TIME_HEADERS, rows))
    med = {k: C.median(v) for k, v in times.items()}
    data_total = med["archive sha256 (cold)"] + med[f"data fingerprint of {len(y)} images"]
    ckpt_cold = med["checkpoint sha256 (cold)"]
    print(f"data fingerprint overhead: {data_total:.3f} s = {data_total / med[f'decode {args.n} images']:.2f}x the "
          f"decoding scoring does anyway (goal: a few seconds, {C.verdict(data_total < GOAL_SECONDS)})")
    print(f"checkpoint: cold {ckpt_cold:.3f} s ({args.megabytes / ckpt_cold:.0f} MB/s), cached "
          f"{med['checkpoint sha256 (cached)'] * 1e3:.2f} ms, {ckpt_cold / med['torch.load of the checkpoint']:.2f}x "
          f"a torch.load (goal: a few seconds, {C.verdict(ckpt_cold < GOAL_SECONDS)})")


if __name__ == "__main__":
    main()
