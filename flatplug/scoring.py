"""Score model zoos: for each model, clean accuracy, robust accuracy under an attack, and measures.

Work is cut into one :class:`Job` per model. A job loads its model itself (so an executor can
run it on another process or machine from plain options), skips every row already in the
store, and hands each result to a sink as soon as it exists: the local executor writes it to
the store at once, so a killed run loses at most the row in flight. A model that fails to load
or score is recorded as a failure and the run goes on.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import traceback
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from . import __version__, plugins
from ._progress import progress
from ._resources import exact_precision, forward_precision, free_cuda_memory, is_oom, prefer_channels_last, suggest_batch_size
from .attacks import correct_under, pgd
from .registry import ForwardPass
from .store import Store
from .types import LoadedModel

DEFAULT_ATTACK = {"name": "pgd", "eps": 8 / 255, "steps": 10}

Row = dict[str, Any]


def parse_eps(text: str | float) -> float:
    """``"8/255"``, ``"0.03"`` or a number, as a float."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps: expected a number or a fraction such as 8/255, got {text!r}") from None


@dataclass(frozen=True)
class ModelSpec:
    """A model a worker can load by itself: a registered source, its options, and a name."""

    source: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, source: str, name: str, **options: Any) -> "ModelSpec":
        return cls(source, name, tuple(sorted(options.items())))

    def load(self, device: str | torch.device) -> LoadedModel:
        factory = plugins.get("sources", self.source)
        return factory(**dict(self.options)).load(self.name, device=device)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset, its path and options, and the subset (``n``, ``seed``)."""

    name: str
    path: str | None = None
    n: int | None = None
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        where = f"[{Path(self.path).name}]" if self.path else ""
        return f"{self.name}{where}:n={self.n if self.n is not None else 'all'},seed={self.seed}"

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        loader = plugins.get("datasets", self.name)
        kwargs: dict[str, Any] = dict(self.options)
        if self.path is not None:
            kwargs["path"] = self.path
        x, y = loader(n=self.n, seed=self.seed, **kwargs)[:2]
        return x, y


@dataclass
class Job:
    """Everything needed to score one model; plain data, so it can travel to a worker."""

    model: ModelSpec | LoadedModel
    dataset: DatasetSpec | tuple[str, torch.Tensor, torch.Tensor]
    measures: dict[str, dict[str, Any]]
    attack: dict[str, Any]
    device: str | None
    batch_size: int | None = None
    precision: str = "fp32"

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def source_name(self) -> str:
        return self.model.source if isinstance(self.model, ModelSpec) else str(self.model.metadata.get("source", "inline"))

    @property
    def dataset_key(self) -> str:
        return self.dataset.key if isinstance(self.dataset, DatasetSpec) else self.dataset[0]

    def planned(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(kind, name, params)`` of every row this job produces."""
        attack_params = {k: v for k, v in self.attack.items() if k != "name"}
        rows = [("accuracy", "clean", {}), ("attack", self.attack["name"], attack_params)]
        return rows + [("measure", name, params) for name, params in self.measures.items()]

    def key(self, kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        return dict(model=self.model_name, source=self.source_name, dataset=self.dataset_key,
                    kind=kind, name=name, params=params)


def versions() -> dict[str, str]:
    return {"flatplug": __version__, "torch": torch.__version__, "python": platform.python_version()}


def resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but CUDA is not available here; pass --device cpu")
    return device


def make_attack(model: nn.Module, spec: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A registered attack (``factory(model, **params)``), else the core PGD for ``pgd``/``pgdl2``.

    Settings use flatplug's one vocabulary (``eps``, ``norm``, ``steps``, ``step_size``,
    ``random_start``); adapters translate at their boundary (torchattacks' ``alpha``), so the same
    spec runs on the torchattacks adapter's PGD and on the core fallback.
    """
    name = spec["name"]
    params = {k: v for k, v in spec.items() if k != "name"}
    if name in plugins.list_plugins("attacks"):
        factory = plugins.get("attacks", name)
        accepted = getattr(factory, "parameters", None)
        if accepted is not None and "eps" not in accepted:
            params.pop("eps", None)  # an unbounded attack (cw, deepfool): eps does not apply
        if (accepted is not None and {"eps", "steps", "step_size"} <= set(accepted) and "step_size" not in params
                and "eps" in params and params.get("steps")):
            params["step_size"] = 2.5 * float(params["eps"]) / int(params["steps"])  # the core PGD's rule
        return factory(model, **params)
    if name in ("pgd", "pgdl2"):
        norm = "l2" if name == "pgdl2" else params.pop("norm", "linf")
        unknown = set(params) - {"eps", "steps", "step_size", "random_start", "seed"}
        if unknown:
            raise ValueError(f"attack {name!r} (core PGD) takes eps, norm, steps, step_size, random_start, seed; "
                             f"got {sorted(unknown)}")
        return lambda x, y: pgd(model, x, y, norm=norm, **params)
    plugins.get("attacks", name)  # raises with the available names and the closest match
    raise AssertionError("unreachable")


def _check_input_shape(loaded: LoadedModel, x: torch.Tensor) -> None:
    expected = loaded.metadata.get("input_shape") or loaded.metadata.get("input")
    if expected is not None and list(expected) != list(x.shape[1:]):
        raise ValueError(f"model {loaded.name!r} expects inputs of shape {list(expected)} but the dataset has "
                         f"images of shape {list(x.shape[1:])}; score it on a dataset with matching images")
    try:
        with torch.no_grad():
            loaded.module(x[:2])
    except RuntimeError as exc:
        raise ValueError(f"model {loaded.name!r} cannot run on the dataset's images of shape {list(x.shape[1:])} "
                         f"({str(exc).splitlines()[0]}); score it on a dataset with matching images") from None


_DATA_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _dataset_tensors(job: Job) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(job.dataset, DatasetSpec):
        return job.dataset[1], job.dataset[2]
    if job.dataset.key not in _DATA_CACHE:
        _DATA_CACHE[job.dataset.key] = job.dataset.load()
    return _DATA_CACHE[job.dataset.key]


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


class _ModelRun:
    """One loaded model on its data: computes rows, sharing one forward pass where it can."""

    def __init__(self, job: Job, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.job, self.model, self.x, self.y, self.batch_size = job, model, x, y, batch_size
        self._forward: tuple | None = None

    @property
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return _batches(self.x, self.y, self.batch_size)

    def forward(self) -> ForwardPass:
        """One full-precision pass: logits, and the features of the last ``nn.Linear`` when it produces them."""
        if self._forward is None:
            from .features import features_and_logits, find_layer

            with exact_precision():
                try:
                    name, linear = find_layer(self.model, None)
                    phi, logits, _ = features_and_logits(self.model, self.batches, linear)
                    self._forward = ForwardPass(logits, self.y, phi, linear, name)
                except (ValueError, TypeError):
                    with torch.no_grad():
                        logits = torch.cat([self.model(x) for x, _ in self.batches])
                    self._forward = ForwardPass(logits, self.y)
        return self._forward

    def compute(self, kind: str, name: str, params: dict[str, Any]) -> tuple[float, dict[str, Any], Any]:
        details: dict[str, Any] = {"n": int(len(self.y)), "batch_size": self.batch_size}
        if kind == "accuracy":
            logits = self.forward().logits
            return float((logits.argmax(1) == self.y).float().mean()), details, None
        if kind == "attack":
            attack = make_attack(self.model, {"name": name, **params})
            torch.manual_seed(0)  # attacks that draw from the global RNG (torchattacks) are repeatable
            with forward_precision(self.job.device, self.job.precision):
                correct = correct_under(self.model, self.batches, attack)
            details["precision"] = self.job.precision
            return float(correct.float().mean()), details, None
        info = plugins.info("measures", name)
        if (info.from_forward is not None and set(params) <= info.forward_params
                and self.forward().features is not None):
            with exact_precision():
                result = info.from_forward(self.forward(), **params)
            details["shared_forward"] = True
        else:
            from .api import measure

            with exact_precision():
                result = measure(name, self.model, self.batches, quiet=True, **params)
        details.update(result.details)
        return result.value, details, result.per_sample


def run_job(job: Job, sink: Callable[[Row], None], *, done: Callable[[dict], bool] = lambda key: False,
            quiet: bool = True) -> None:
    """Score one model, calling ``sink(row)`` as each result exists; skip keys for which ``done(key)``.

    Clean accuracy and the default relative flatness share one forward pass. A CUDA
    out-of-memory error halves the batch size and retries the row (down to batch 1).
    """
    todo = [(kind, name, params) for kind, name, params in job.planned() if not done(job.key(kind, name, params))]
    if not todo:
        return
    if job.device is None:
        job = dataclasses.replace(job, device=resolve_device(None))
    common = dict(device=job.device, versions=versions())

    def failure(kind: str, name: str, params: dict, exc: BaseException, seconds: float | None) -> Row:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return {**job.key(kind, name, params), "value": None, "details": {"stage": kind}, "seconds": seconds,
                "status": "failed", "error": detail, **common}

    try:
        start = time.perf_counter()
        loaded = job.model if isinstance(job.model, LoadedModel) else job.model.load(job.device)
        model = prefer_channels_last(loaded.module.to(job.device).eval(), job.device)
        x_all, y_all = _dataset_tensors(job)
        x_all, y_all = x_all.to(job.device), y_all.to(job.device)
        _check_input_shape(loaded, x_all)
        batch_size = job.batch_size or suggest_batch_size(model, x_all, job.device)
        load_seconds = time.perf_counter() - start
    except Exception as exc:  # recorded, and the run goes on
        sink(failure("failure", "load", {}, exc, None))
        return
    run = _ModelRun(job, model, x_all, y_all, batch_size)
    for kind, name, params in progress(todo, desc=f"{job.model_name}", quiet=quiet):
        start = time.perf_counter()
        try:
            while True:
                try:
                    value, details, per_sample = run.compute(kind, name, params)
                    break
                except Exception as exc:
                    if not is_oom(exc) or run.batch_size == 1:
                        raise
                    run.batch_size //= 2
                    run._forward = None
                    free_cuda_memory(job.device)
                    warnings.warn(f"{job.model_name}: out of memory in {kind} {name!r}; retrying with batch size "
                                  f"{run.batch_size}", RuntimeWarning, stacklevel=2)
            if kind == "accuracy":
                details["load_seconds"] = load_seconds
            if per_sample is not None:
                details["per_sample_mean"] = float(per_sample.float().mean())
            sink({**job.key(kind, name, params), "value": value, "details": details,
                  "seconds": time.perf_counter() - start, "status": "ok", "error": None, **common})
        except Exception as exc:
            sink(failure(kind, name, params, exc, time.perf_counter() - start))


class LocalExecutor:
    """Runs jobs one after another in this process, writing each row to the store at once."""

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"the local executor takes no options, got {sorted(options)}")

    def run(self, jobs: Sequence[Job], store: Store, *, quiet: bool = False) -> None:
        for job in progress(jobs, desc="models", quiet=quiet, leave=True):
            run_job(job, lambda row: store.put(**{k: v for k, v in row.items()}),
                    done=lambda key: store.has(**key), quiet=quiet)


def default_measures() -> list[str]:
    """The registered measures that declare ``default=True``: scored when none are named."""
    return [n for n in plugins.list_plugins("measures") if getattr(plugins.info("measures", n), "default", False)]


def threat_norm(attack: dict[str, Any]) -> str:
    """The norm of the attack's ball: its ``norm`` setting, else ``l2`` for ``*l2`` attacks, else ``linf``."""
    norm = attack.get("norm")
    if isinstance(norm, str):
        return {"linf": "linf", "l2": "l2"}.get(norm.lower(), norm.lower())
    return "l2" if attack["name"].lower().endswith("l2") else "linf"


def resolve_measures(measures: Any, attack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: params}`` with each measure's declared zoo defaults and the attack settings it follows."""
    if measures is None:
        chosen = {name: {} for name in default_measures()}
    elif isinstance(measures, dict):
        chosen = {k: dict(v or {}) for k, v in measures.items()}
    elif isinstance(measures, str):
        chosen = {measures: {}}
    else:
        chosen = {}
        for item in measures:
            name, params = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
            chosen[name] = params
    follow = {"eps": attack.get("eps"), "norm": threat_norm(attack)}
    for name, params in chosen.items():
        info = plugins.info("measures", name)  # unknown names fail before any work, with the closest match
        for key, value in getattr(info, "zoo_defaults", {}).items():
            params.setdefault(key, value)
        for key in getattr(info, "follows_attack", ()):
            value = attack.get(key, follow.get(key))
            if value is not None:
                params.setdefault(key, value)
    return chosen


def resolve_attack(attack: Any) -> dict[str, Any]:
    if attack is None:
        return dict(DEFAULT_ATTACK)
    if isinstance(attack, str):
        spec = {"name": attack, "eps": DEFAULT_ATTACK["eps"]}
        if attack in ("pgd", "pgdl2"):
            spec["steps"] = DEFAULT_ATTACK["steps"]
    else:
        spec = dict(attack)
        spec.setdefault("name", "pgd")
        spec.setdefault("eps", DEFAULT_ATTACK["eps"])
    spec["eps"] = parse_eps(spec["eps"])
    if spec["eps"] < 0:
        raise ValueError(f"eps: expected a non-negative radius, got {spec['eps']}")
    return spec


def score(
    models: Iterable[ModelSpec | LoadedModel],
    dataset: DatasetSpec | tuple,
    *,
    measures: Any = None,
    attack: Any = None,
    store: str | Path | Store = "flatplug-results.db",
    executor: str = "local",
    device: str | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    quiet: bool = False,
    **executor_options: Any,
):
    """Score every model on ``dataset``; returns this run's rows of the store as a DataFrame.

    ``models``: :class:`ModelSpec` (loaded by the executor) or ready :class:`LoadedModel`
    objects. ``dataset``: a :class:`DatasetSpec`, or ``(x, y)`` / ``(name, x, y)`` tensors.
    ``measures``: names, ``{name: params}``, or None for :func:`default_measures`.
    ``attack``: a name or ``{"name": ..., "eps": ..., ...}`` (default PGD-10 at 8/255); a
    registered attack (e.g. from the torchattacks adapter) is used when present, else the
    core PGD. ``executor``: ``"local"`` or any registered executor (``"ray"``).
    ``batch_size``: None picks one from free GPU memory (128 on the CPU); an out-of-memory
    error halves it. ``precision``: ``"fp32"``, ``"tf32"`` or ``"bf16"`` for clean accuracy and
    attacks on CUDA; second-order measures always run in full precision.
    """
    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"precision: expected fp32, tf32 or bf16, got {precision!r}")
    models = list(models)
    if not models:
        raise ValueError("models: nothing to score; pass at least one model")
    attack_spec = resolve_attack(attack)
    chosen = resolve_measures(measures, attack_spec)
    if not isinstance(dataset, DatasetSpec):
        if len(dataset) == 2:
            dataset = ("custom", dataset[0], dataset[1])
        name, x, y = dataset
        dataset = (name, x, y)
    if isinstance(dataset, DatasetSpec) and dataset.key not in _DATA_CACHE:
        _DATA_CACHE[dataset.key] = dataset.load()  # bad paths or n fail here, before any work
    for source in {m.source for m in models if isinstance(m, ModelSpec)}:
        plugins.get("sources", source)
    # a remote executor picks the device where the task runs (a CPU-only head can drive GPU workers)
    dev = resolve_device(device) if executor == "local" else (None if device is None else str(device))
    jobs = [Job(m, dataset, chosen, attack_spec, dev, batch_size, precision) for m in models]
    own = not isinstance(store, Store)
    db = Store(store) if own else store
    try:
        runner = plugins.get("executors", executor)(**executor_options)
        runner.run(jobs, db, quiet=quiet)
        frame = db.to_dataframe()
    finally:
        if own:
            db.close()
    names = {j.model_name for j in jobs}
    keys = {j.dataset_key for j in jobs}
    return frame[frame["model"].isin(names) & frame["dataset"].isin(keys)].reset_index(drop=True)
