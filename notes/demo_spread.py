"""How far the demo's correlations move when only the CPU's float rounding changes (run by hand).

The demo zoo is trained from fixed seeds and is deterministic on one machine, but training is
chaotic: oneDNN and ATen pick kernels (and blockings) by the CPU's instruction set and caches, so
another CPU rounds differently and trains slightly different models. README's demo correlations
were ρ = +0.62 (Hessian trace) and −0.81 (local flatness) on one machine and +0.69 and −0.83 on an
AMD EPYC with AVX-512 (2026-12-02). This script emulates other CPUs on one machine by capping the
instruction sets oneDNN (``ONEDNN_MAX_CPU_ISA``) and ATen (``ATEN_CPU_CAPABILITY``) may use, runs the
demo's scoring of the two quoted measures in a fresh process and cache for each setting, exactly as
``tests/test_demo.py`` does, and prints the Spearman correlations with robust accuracy.

    .venv/bin/python notes/demo_spread.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

SETTINGS = {
    "this CPU's own kernels": {},
    "oneDNN capped at AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "oneDNN capped at SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "oneDNN AVX2, ATen default (no SIMD)": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "default"},
    "oneDNN SSE4.1, ATen AVX2": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "avx2"},
}
SCRIPT = """
import torch
torch.set_num_threads(1)
from flatplug.cli import main
assert main(["score", "--measures", "hessian_trace,local_flatness", "--quiet", "--no-report"]) == 0
assert main(["report"]) == 0
"""


def main() -> None:
    rows = []
    for label, extra in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, **extra, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
            env.pop("FLATPLUG_CACHE", None)
            subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp, env=env, check=True, capture_output=True)
            corr = pd.read_csv(Path(tmp) / "flatplug-report" / "correlations.csv")
            robust = corr[corr["y"].str.startswith("robust:")].set_index("x")["spearman"]
        rows.append((label, float(robust["hessian_trace"]), float(robust["local_flatness"])))
        print(f"{label:40s} trace rho {rows[-1][1]:+.3f}  local flatness rho {rows[-1][2]:+.3f}", flush=True)
    trace = [r[1] for r in rows]
    flat = [r[2] for r in rows]
    print(f"range over {len(rows)} settings: trace {min(trace):+.3f} .. {max(trace):+.3f}, "
          f"local flatness {min(flat):+.3f} .. {max(flat):+.3f}")


if __name__ == "__main__":
    main()
