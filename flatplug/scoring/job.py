"""One model's share of a scoring run: what to compute, and the store key of every row."""

from __future__ import annotations

import dataclasses
import functools
import platform
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from .. import __version__
from .attack_specs import attack_version
from .measure_specs import measure_version

Row = dict[str, Any]
#: Implementation version of clean accuracy (one forward pass, argmax).
CLEAN_VERSION = "flatplug:1"


class Planned(NamedTuple):
    """One row a job produces: ``kind`` (accuracy, attack, measure), ``name``, settings, version."""

    kind: str
    name: str
    params: dict[str, Any]
    version: str


#: libraries whose code computes rows through the adapters (recorded when installed)
TRACED_LIBRARIES = ("numpy", "torchattacks", "adversarial-robustness-toolbox", "robustbench", "pyautoattack", "ray")


def versions() -> dict[str, str]:
    """What computed a row, for tracing it: flatplug's version and a digest of its source files (many
    commits share a version number), torch, Python, every installed flatplug plugin distribution and
    the libraries the adapters run (``TRACED_LIBRARIES``). Recorded, not keyed: a row's key holds the
    implementation version its plugin declares (:class:`flatplug.registry.MeasureInfo`)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    from importlib import metadata

    from ..sources.demo import code_digest

    out = {"flatplug": __version__, "flatplug_code": code_digest()[:16], "torch": torch.__version__,
           "python": platform.python_version()}
    try:
        plugin_dists = {ep.dist.name: ep.dist.version for ep in metadata.entry_points(group="flatplug")
                        if getattr(ep, "dist", None) is not None}
    except Exception:  # noqa: BLE001 - tracing only: a broken metadata entry must not stop scoring
        plugin_dists = {}
    out.update(plugin_dists)
    for name in TRACED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(sorted(out.items()))


def resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but CUDA is not available here; pass --device cpu")
    return device


@dataclass
class Job:
    """Everything needed to score one model; plain data, so it can travel to a worker.

    ``model``: a model reference (:class:`~flatplug.scoring.ModelSpec`, :class:`~flatplug.scoring.InMemoryModel`);
    ``data``: a data reference (:class:`~flatplug.scoring.DatasetSpec`, :class:`~flatplug.scoring.TensorData`);
    ``attacks``: attack specs, the first one the run's main attack; ``rerun``: compute every row
    even when the store has it; ``model_fingerprint``/``data_fingerprint``: the content the rows
    are keyed by (None: computed where the job runs, see :meth:`resolved`).
    """

    model: Any
    data: Any
    measures: dict[str, dict[str, Any]]
    attacks: list[dict[str, Any]]
    device: str | None
    batch_size: int | None = None
    precision: str = "fp32"
    rerun: bool = False
    model_fingerprint: str | None = None
    data_fingerprint: str | None = None

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def source_name(self) -> str:
        return self.model.source

    @property
    def dataset_key(self) -> str:
        return self.data.key

    def planned(self) -> list[Planned]:
        """Every row this job produces, in the order it computes them."""
        rows = [Planned("accuracy", "clean", {}, CLEAN_VERSION)]
        for spec in self.attacks:
            params = {k: v for k, v in spec.items() if k != "name"}
            if self.precision != "fp32":  # a reduced-precision attack is another result (fp32 keys unchanged)
                params["precision"] = self.precision
            rows.append(Planned("attack", spec["name"], params, attack_version(spec["name"])))
        rows += [Planned("measure", name, params, measure_version(name)) for name, params in self.measures.items()]
        return rows

    def key(self, row: Planned) -> dict[str, Any]:
        """The store key of ``row``: names, content fingerprints, implementation version and settings."""
        return dict(model=self.model_name, source=self.source_name, dataset=self.dataset_key,
                    model_fingerprint=self.model_fingerprint or "", data_fingerprint=self.data_fingerprint or "",
                    kind=row.kind, name=row.name, impl_version=row.version, params=row.params)

    def failure_key(self, name: str) -> dict[str, Any]:
        """The key of a ``failure`` row (the model could not be loaded or run at all)."""
        return self.key(Planned("failure", name, {}, CLEAN_VERSION))

    def resolved(self, loaded: Any = None) -> "Job":
        """This job with both fingerprints computed (a source without ``fingerprint`` loads the model on the CPU)."""
        model_fp = self.model_fingerprint
        if model_fp is None:
            model_fp = self.model.fingerprint(loaded)
            if model_fp is None:
                model_fp = self.model.fingerprint(self.model.load("cpu"))
        data_fp = self.data_fingerprint or self.data.fingerprint()
        return dataclasses.replace(self, model_fingerprint=model_fp, data_fingerprint=data_fp)

    def missing(self, done: Callable[[dict[str, Any]], bool]) -> list[Planned]:
        """The rows to compute: those ``done(key)`` does not have (all of them when ``rerun``).

        A missing later attack also recomputes the first one: its gradient-masking check compares the
        two robust accuracies (``flatplug.scoring.masking``).
        """
        planned = self.planned()
        if self.rerun:
            return planned
        todo = [row for row in planned if not done(self.key(row))]
        attacks = [row for row in planned if row.kind == "attack"]
        if any(row in todo for row in attacks[1:]) and attacks[0] not in todo:
            todo.insert(1 if planned[0] in todo else 0, attacks[0])
        return todo
