"""Run the leaderboard's plan through ``fp.score``: resumable (the store skips what is there) and on
any registered executor (``"local"``, ``"ray"``).

For every dataset and threat model the plan is scored in stages, each one ``fp.score`` call with
one attack (the store keys rows by attack settings, so each attack is its own row):

1. PGD plus the measures (the threat-model-free ones are computed once and skipped afterwards);
2. worst-case adaptive sharpness (``sharpness`` is one measure name, so each setting is a call);
3. robust-loss sharpness at the threat model, when available;
4. AutoAttack (one call; for the CPU's AA-lite, the per-image ensemble of APGD-CE and APGD-T).

Every call returns its rows of the store; :func:`run_plan` concatenates them, so the tables never
depend on how the store spells its keys. The relative-flatness median per sample is computed here
from the same images (scoring stores the mean), with flatplug's public measure API.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .plan import Plan, ThreatModel, autoattack, model_measures, pgd_attack, robust_sharpness, threat_measures, \
    worst_sharpness


@dataclass
class Stage:
    """One ``fp.score`` call: measures (``{name: params}``) and one attack, at a threat model."""

    name: str
    threat: ThreatModel
    measures: dict[str, dict[str, Any]]
    attack: dict[str, Any]


@dataclass
class RunResult:
    """The rows of every stage, the relative-flatness medians, and where and how long it ran."""

    frame: Any
    medians: dict[tuple[str, str], float]
    record: dict[str, Any] = field(default_factory=dict)


def stages(plan: Plan) -> list[Stage]:
    """The ``fp.score`` calls of the plan, in order."""
    out = []
    for tm in plan.active():
        pgd = pgd_attack(tm)
        out.append(Stage("pgd+measures", tm, {**model_measures(), **threat_measures(tm)}, pgd))
        out.append(Stage("worst-case sharpness", tm, {"sharpness": worst_sharpness()}, pgd))
        if plan.robust_sharpness:
            out.append(Stage("robust-loss sharpness", tm, {"sharpness": robust_sharpness(tm)}, pgd))
        for spec in autoattack(tm, plan.aa):
            out.append(Stage(spec["name"], tm, {}, spec))
    return out


def machine() -> dict[str, Any]:
    """The machine the run used: CPU model, cores, torch threads, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def relative_flatness_median(plan: Plan, dataset: str, model: str, device: str, data: tuple | None = None) -> float:
    """Median over the images of the per-sample relative flatness (pairwise kappa, closed form);
    ``data``: the dataset's ``(x, y)`` when already loaded."""
    import flatplug as fp

    x, y = data if data is not None else plan.dataset(dataset).load()
    loaded = plan.model_spec(model).load(device)
    batches = [(x[i:i + 256].to(device), y[i:i + 256].to(device)) for i in range(0, len(y), 256)]
    result = fp.measure("relative_flatness", loaded.module.eval(), batches, **model_measures()["relative_flatness"])
    if result.per_sample is None:
        return float("nan")
    return float(result.per_sample.double().quantile(0.5))


def run_plan(plan: Plan, *, store: str, executor: str = "local", device: str | None = None, quiet: bool = False,
             log: Callable[[str], None] = print, **executor_options: Any) -> RunResult:
    """Score the plan into ``store`` (rows already there are skipped) and return every row it covers."""
    import pandas as pd

    import flatplug as fp

    start, t0 = time.time(), time.perf_counter()
    frames, seconds = [], {}
    all_stages = stages(plan)
    for i, st in enumerate(all_stages, 1):
        names = plan.models_at(st.threat)
        log(f"[{i}/{len(all_stages)}] {st.threat.dataset} {st.threat.label}: {st.name} on {len(names)} models")
        t = time.perf_counter()
        frame = fp.score([plan.model_spec(m) for m in names], plan.dataset(st.threat.dataset),
                         measures=st.measures, attack=st.attack, store=store, executor=executor, device=device,
                         quiet=quiet, **executor_options)
        seconds[f"{st.threat.slug}: {st.name}"] = round(time.perf_counter() - t, 1)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    keys = ["model", "source", "dataset", "kind", "name", "params"]
    frame = frame.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    medians = {}
    t = time.perf_counter()
    for dataset, names in plan.models.items():
        data = plan.dataset(dataset).load()
        for m in names:
            medians[(dataset, m)] = relative_flatness_median(plan, dataset, m, dev, data)
    seconds["relative flatness medians"] = round(time.perf_counter() - t, 1)
    record = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "stage_seconds": seconds,
        "executor": executor,
        "device": dev if executor == "local" else (device or "chosen per worker"),
        "n": {d: n for d, n in plan.n.items()},
        "aa": plan.aa,
        "robust_sharpness": plan.robust_sharpness,
        "machine": machine(),
        "flatplug": fp.__version__,
    }
    return RunResult(frame, medians, record)
