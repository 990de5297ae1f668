"""What the leaderboard scores: threat models, attacks, measures and sample sizes, all in one place.

Threat models are the ones the zoo's authors trained and evaluated for: CIFAR-10 Linf 2/255 and
8/255, MNIST Linf 0.1 and 0.3, for every model of that dataset. ``wong_small_l2_36px`` was trained
for L2 36/255 (Wong et al. 2018): it is scored at the CIFAR-10 Linf threat models like every other
model (so it is ranked with them), and additionally at its own L2 36/255, in a table of its own.

Attacks, in flatplug's vocabulary, as registered by the torchattacks adapter:

* AutoAttack (on a GPU): ``autoattack`` with ``version="standard"`` and ``seed=0``: the original
  AutoAttack's settings (Croce & Hein 2020, as RobustBench evaluates), APGD-CE (100 iterations),
  APGD-T (100 iterations, 9 target classes), FAB-T (100 iterations, 9 targets), Square (5000
  queries), a per-image ensemble: each attack runs on the images the previous ones did not break.
  ``autoattack`` is the torchattacks adapter's class, built from torchattacks' members with those
  settings (torchattacks' own ``AutoAttack`` runs 10 iterations).
* AA-lite (the CPU stand-in, ``aa="lite"``): one attack row, ``autoattack`` with
  ``version="custom", attacks_to_run=["apgd-ce", "apgd-t"]``: the same per-image ensemble of APGD-CE
  and APGD-T, an image counting as robust only if both attacks fail on it, with the standard
  version's restarts (APGD-CE 1 restart, APGD-T 1 restart x 9 target classes) and ``n_iter=20``
  iterations each (``LITE_ITERATIONS``; the original: 100). FAB-T and Square are left out and the
  iterations cut for their cost on the CPU (APGD-T's 9 x 100 iterations on every robust image alone
  would take over an hour of CPU for the zoo at n = 500), so AA-lite can be higher than the standard
  AutoAttack on the same images; the GPU run is the standard one.
* PGD: ``pgd`` (``pgdl2`` for L2), 20 steps of ``2.5 * eps / 20`` from a random start.

Measures (parameters given explicitly, so the leaderboard does not move when a default does):
relative flatness (pairwise kappa, closed form; mean per sample from the store, median per sample
computed from the same images), top Hessian eigenvalue, Hessian trace (Hutchinson), local flatness
(LFR, the threat model's ball), adaptive average- and worst-case sharpness (rho 0.05, L2), and
robust-loss sharpness (adaptive worst-case sharpness of the adversarial loss: 5 ascent steps, the
attack, PGD-5 at the threat model, re-optimised at every perturbed weight) when this flatplug's
``sharpness`` takes ``adversarial=``; its cost (about 36 gradient passes per step budget) is why its
steps are few.

Sample sizes: the full test sets when CUDA is available; on the CPU the class-balanced subsets
``CPU_N`` (``DatasetSpec(n=...)``, seed 0), chosen so the whole CPU run ends within 90 minutes on
a 2-core machine (per-model costs in notes/leaderboard.md).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..scoring import DatasetSpec, ModelSpec

#: class-balanced subset sizes on the CPU (see the module docstring)
CPU_N = {"cifar10": 500, "mnist": 500}
DATASET_NAMES = {"cifar10": "CIFAR-10 test set", "mnist": "MNIST test set"}
PGD_STEPS = 20
ROBUST_SHARPNESS_STEPS = 5
L2_MODEL = "wong_small_l2_36px"


@dataclass(frozen=True)
class ThreatModel:
    """A norm ball: ``dataset``, ``norm`` ("linf"/"l2"), ``eps`` as a fraction string, and the models
    scored at it (``None``: every model of the dataset)."""

    dataset: str
    norm: str
    eps_text: str
    models: tuple[str, ...] | None = None

    @property
    def eps(self) -> float:
        return float(Fraction(self.eps_text))

    @property
    def label(self) -> str:
        return f"{'Linf' if self.norm == 'linf' else 'L2'} {self.eps_text}"

    @property
    def slug(self) -> str:
        return f"{self.dataset}-{self.norm}-{self.eps_text.replace('/', '_')}"


THREAT_MODELS = (
    ThreatModel("cifar10", "linf", "2/255"),
    ThreatModel("cifar10", "linf", "8/255"),
    ThreatModel("cifar10", "l2", "36/255", models=(L2_MODEL,)),
    ThreatModel("mnist", "linf", "0.1"),
    ThreatModel("mnist", "linf", "0.3"),
)


def pgd_attack(tm: ThreatModel) -> dict[str, Any]:
    name = "pgd" if tm.norm == "linf" else "pgdl2"
    return {"name": name, "eps": tm.eps, "steps": PGD_STEPS, "step_size": 2.5 * tm.eps / PGD_STEPS}


AA_MODES = ("standard", "plus", "rand", "lite")


#: the attacks of AA-lite, in the original AutoAttack's names (``version="custom"``)
LITE_ATTACKS = ("apgd-ce", "apgd-t")
#: iterations of APGD-CE and APGD-T in AA-lite (the original: 100); see the module docstring
LITE_ITERATIONS = 20
#: restarts of APGD-CE in AA-lite (the standard version's; APGD-T runs 1 restart x 9 targets)
LITE_RESTARTS = 1


def autoattack(tm: ThreatModel, mode: str = "standard") -> list[dict[str, Any]]:
    """The attack row that makes the AutoAttack column: ``autoattack(version=mode)`` with the original's
    settings, or for ``mode="lite"`` (the CPU stand-in) ``version="custom"`` with APGD-CE and APGD-T,
    one per-image ensemble (see the module docstring)."""
    if mode not in AA_MODES:
        raise ValueError(f"AutoAttack: expected one of {', '.join(AA_MODES)}, got {mode!r}")
    spec: dict[str, Any] = {"name": "autoattack", "eps": tm.eps, "norm": tm.norm, "version": mode, "seed": 0}
    if mode == "lite":
        spec.update(version="custom", attacks_to_run=list(LITE_ATTACKS), n_iter=LITE_ITERATIONS,
                    n_restarts=LITE_RESTARTS)
    return [spec]


def aa_label(mode: str) -> str:
    if mode == "lite":
        return "AA-lite"
    return "AutoAttack" if mode == "standard" else f"AutoAttack ({mode})"


def has_robust_sharpness() -> bool:
    """Whether this flatplug's ``sharpness`` measures the robust loss (``adversarial=``)."""
    from .. import measures

    return "adversarial" in inspect.signature(measures.sharpness).parameters


def model_measures() -> dict[str, dict[str, Any]]:
    """Measures that do not depend on the threat model (scored once per model)."""
    return {
        "relative_flatness": {},
        "hessian_eigenvalues": {"k": 1, "max_iter": 50},
        "hessian_trace": {"probes": 30, "tol": 0.02},
        "sharpness": {"rho": 0.05, "kind": "average", "adaptive": True, "samples": 20},
    }


def worst_sharpness() -> dict[str, Any]:
    return {"rho": 0.05, "kind": "worst", "adaptive": True}


def threat_measures(tm: ThreatModel) -> dict[str, dict[str, Any]]:
    """Measures of the threat model's ball: local flatness, and robust-loss sharpness when available."""
    out: dict[str, dict[str, Any]] = {"local_flatness": {"eps": tm.eps, "norm": tm.norm, "steps": 10}}
    return out


def robust_sharpness(tm: ThreatModel) -> dict[str, Any]:
    """Adaptive worst-case sharpness of the adversarial loss: 5 ascent steps in weight space, the attack
    (PGD-5 at the threat model) re-optimised at every perturbed weight (Stutz et al. 2021)."""
    return {"rho": 0.05, "kind": "worst", "adaptive": True, "steps": ROBUST_SHARPNESS_STEPS,
            "adversarial": {"eps": tm.eps, "norm": tm.norm, "steps": ROBUST_SHARPNESS_STEPS}}


@dataclass
class Plan:
    """Everything one leaderboard run needs; :func:`default_plan` builds it from ``../shared``."""

    shared: Path
    n: dict[str, int | None]
    models: dict[str, list[str]]
    threat_models: tuple[ThreatModel, ...] = THREAT_MODELS
    aa: str = "standard"
    robust_sharpness: bool = field(default_factory=has_robust_sharpness)

    @property
    def manifest(self) -> Path:
        return self.shared / "models" / "zoo.json"

    def dataset(self, name: str) -> DatasetSpec:
        if name == "cifar10":
            return DatasetSpec("imagefolder", str(self.shared / "data" / "cifar10" / "test.tar.gz"), self.n[name], 0)
        if name == "mnist":
            return DatasetSpec("mnist", str(self.shared / "data" / "mnist"), self.n[name], 0)
        raise ValueError(f"dataset: the leaderboard scores cifar10 and mnist models, got {name!r}")

    def model_spec(self, name: str) -> ModelSpec:
        return ModelSpec.of("zoo", name, manifest=str(self.manifest))

    def models_at(self, tm: ThreatModel) -> list[str]:
        present = self.models.get(tm.dataset, [])
        return [m for m in present if tm.models is None or m in tm.models]

    def active(self) -> list[ThreatModel]:
        return [tm for tm in self.threat_models if self.models_at(tm)]


def zoo_models(shared: Path) -> dict[str, list[str]]:
    """``{dataset: [model, ...]}`` in the manifest's order."""
    manifest = Path(shared) / "models" / "zoo.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: the zoo manifest is missing; pass --shared pointing at the folder "
                                "that holds models/zoo.json and data/ (../shared beside the checkout)")
    out: dict[str, list[str]] = {}
    for name, entry in json.loads(manifest.read_text()).items():
        out.setdefault(entry["dataset"], []).append(name)
    return out


def _check_checkpoints(shared: Path, names: list[str]) -> None:
    """Refuse the plan, naming every file, when any selected model's checkpoint is not on disk."""
    from ..sources import ZooSource
    from ..sources.preflight import describe, unloadable

    problems = unloadable(ZooSource(shared / "models" / "zoo.json"), names)
    if problems:
        raise FileNotFoundError(f"{len(problems)} of {len(names)} models have no checkpoint; nothing was scored: "
                                + describe(problems))


def default_plan(shared: str | Path = "../shared", *, n: int | str | None = "auto", models: list[str] | None = None,
                 device: str | None = None, aa: str = "auto") -> Plan:
    """The leaderboard plan. ``n="auto"``: full test sets when CUDA is used, else :data:`CPU_N`; an
    integer: that many class-balanced images per dataset; ``None``: full test sets. ``aa="auto"``: the
    standard AutoAttack on a GPU, ``"lite"`` (one per-image ensemble of APGD-CE and APGD-T) on the
    CPU. ``models``: a subset of the zoo (default: all 24)."""
    import torch

    shared = Path(shared)
    by_dataset = zoo_models(shared)
    if models:
        known = {m for ms in by_dataset.values() for m in ms}
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ValueError(f"models: {', '.join(map(repr, unknown))} not in {shared / 'models' / 'zoo.json'}; "
                             f"known: {', '.join(sorted(known))}")
        by_dataset = {d: [m for m in ms if m in models] for d, ms in by_dataset.items()}
        by_dataset = {d: ms for d, ms in by_dataset.items() if ms}
    _check_checkpoints(shared, [m for ms in by_dataset.values() for m in ms])
    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if n == "auto":
        sizes: dict[str, int | None] = {d: None if on_gpu else CPU_N[d] for d in by_dataset}
    elif n is None:
        sizes = {d: None for d in by_dataset}
    else:
        if isinstance(n, bool) or not isinstance(n, int) or n < 10:
            raise ValueError(f"n: expected 'auto', None or a number of images >= 10 (one per class), got {n!r}")
        sizes = {d: n for d in by_dataset}
    if aa == "auto":
        aa = "standard" if on_gpu else "lite"
    if aa not in AA_MODES:
        raise ValueError(f"aa: expected auto or one of {', '.join(AA_MODES)}, got {aa!r}")
    return Plan(shared=shared, n=sizes, models=by_dataset, aa=aa)
