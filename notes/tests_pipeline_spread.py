"""Spread over seeds of the claims tests/test_example_pipelines.py checks (run by hand, not by the suite).

    PYTHONPATH=... python notes/tests_pipeline_spread.py art 0 1 2 3 4
    PYTHONPATH=... python notes/tests_pipeline_spread.py torchattacks 0 1 2 3 4

art: examples/art_pipeline.py --fast --seed S (S moves the MNIST slice, the initialisation and
LFRTrainer's batches). torchattacks: examples/torchattacks_pipeline.py --fast with the CIFAR-10 slice drawn
with seed S and torch's global seed S (PGD's random start); the example itself fixes both at 0.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def art(seed: int) -> dict:
    t = load("art_pipeline").main(["--fast", "--seed", str(seed), "--shared", str(ROOT.parent / "shared")])
    s, l = t["standard (ART fit)"], t["LFR (flatplug_art.LFRTrainer)"]
    a = t["TRADES-AWP (flatplug_art.AWPTrainer)"]
    return {"seed": seed, "std_clean": s["clean"], "lfr_clean": l["clean"], "trades_clean": a["clean"],
            "std_pgd": s["pgd@0.1"], "lfr_pgd": l["pgd@0.1"], "pgd_gain": l["pgd@0.1"] - s["pgd@0.1"],
            "trades_gain": a["pgd@0.1"] - s["pgd@0.1"], "std_lf": s["local_flatness"],
            "lfr_lf": l["local_flatness"], "lf_ratio": l["local_flatness"] / s["local_flatness"]}


def torchattacks(seed: int) -> dict:
    mod = load("torchattacks_pipeline")
    mod.load_imagefolder = functools.partial(mod.load_imagefolder, seed=seed)
    real_seed = torch.manual_seed
    torch.manual_seed = lambda _s: real_seed(seed)
    try:
        with tempfile.TemporaryDirectory() as out:
            t = mod.main(["--fast", "--shared", str(ROOT.parent / "shared"), "--out", out])
    finally:
        torch.manual_seed = real_seed
    p, f = t["torchattacks.PGD"], t["FlatRegionAttack"]
    return {"seed": seed, "robust_pgd": p["robust"], "robust_flat": f["robust"],
            "robust_diff": f["robust"] - p["robust"], "rf_ratio": f["rel_flatness(adv)"] / p["rel_flatness(adv)"],
            "conf_pgd": p["wrong_conf"], "conf_flat": f["wrong_conf"], "conf_gain": f["wrong_conf"] - p["wrong_conf"]}


if __name__ == "__main__":
    which, seeds = sys.argv[1], [int(s) for s in sys.argv[2:]]
    for s in seeds:
        print(json.dumps({"torchattacks": torchattacks, "art": art}[which](s)), flush=True)
