"""The ``ray`` executor: one Ray task per model, results written to the store as each task ends.

The driver (the process that called :func:`flatplug.score`) owns the store. For every job it
computes the content fingerprints of its model and data (the row keys), asks the store which of the
job's rows already exist, submits a task only for jobs with rows missing (every job when it asks for
a rerun), and tells each task which rows to skip. A task loads its model on the worker from the
job's model reference (e.g. a :class:`~flatplug.scoring.ModelSpec`) and its data from the data
reference (a :class:`~flatplug.scoring.DatasetSpec` is loaded on the worker, cached per worker
process by the core; tensors travel), runs :func:`flatplug.scoring.run_job`, which checks that the
worker's data have the driver's fingerprint, and returns its rows. Each data reference is put in
Ray's object store once and shared by every task.

A task whose worker dies (killed, out of memory, node lost) is run again by Ray up to
``max_retries`` times; a killed attempt returns nothing, so a retry never duplicates rows. When the
retries run out, the model gets one ``failure`` row (name ``"worker"``) and the run goes on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Iterator, Sequence

from flatplug.ext import progress
from flatplug.scoring import Job, Row, run_job, versions
from flatplug.store import KEY, Store, canonical_params

Key = tuple[str, ...]


def _key(key: dict[str, Any]) -> Key:
    """A row key as a hashable tuple (params as their canonical JSON, as the store keys them)."""
    return tuple(canonical_params(key[k]) if k == "params" else str(key[k]) for k in KEY)


def _worker_device() -> str:
    """The device of the running task: its GPU when Ray gave it one, else the CPU."""
    import ray

    return "cuda" if ray.get_gpu_ids() else "cpu"


def score_on_worker(job: Job, data: Any, skip: frozenset[Key], torch_threads: int) -> list[Row]:
    """The body of one Ray task: score ``job`` on this worker and return its rows.

    ``data`` is the job's data reference, resolved by Ray from the object store.
    """
    import torch

    torch.set_num_threads(torch_threads)
    device = job.device or _worker_device()  # an explicit device wins; else the task's GPU, if any
    job = dataclasses.replace(job, device=device, data=data)
    rows: list[Row] = []
    run_job(job, rows.append, done=lambda key: _key(key) in skip, quiet=True)
    return rows


class RayConnectionError(RuntimeError):
    """The Ray cluster named by ``address`` cannot be reached."""


def _check_count(name: str, value: Any, *, allow_none: bool = False, minimum: float = 0, integer: bool = False,
                 hint: str = "") -> None:
    if value is None and allow_none:
        return
    number_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types) or not math.isfinite(value) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: expected {kind} >= {minimum}, got {value!r}{hint}")


class RayExecutor:
    """Score each model as a Ray task, on the GPUs (or CPUs) of a Ray cluster.

    ``address``: ``None`` (``RAY_ADDRESS``, else a running local cluster, else a new local one),
    ``"auto"`` (the cluster this machine belongs to) or ``"ray://host:10001"`` (Ray Client).
    If Ray is already initialised in this process, that connection is used as is.
    ``num_gpus_per_task``: GPUs per model (fractions share a GPU); ``None`` gives 1 when the
    cluster has GPUs, else 0. ``num_cpus_per_task``: CPUs reserved per model. ``max_retries``:
    how often Ray reruns a task whose worker died or raised. ``torch_threads``: torch's
    intra-op threads in a task (default: its CPUs). ``init_kwargs``: extra ``ray.init`` arguments.
    """

    def __init__(self, address: str | None = None, num_gpus_per_task: float | None = None,
                 num_cpus_per_task: float = 1, max_retries: int = 2, torch_threads: int | None = None,
                 init_kwargs: dict[str, Any] | None = None):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address: expected None, 'auto', 'host:port' or 'ray://host:port', got {address!r}")
        _check_count("num_gpus_per_task", num_gpus_per_task, allow_none=True,
                     hint="; pass None to use one GPU per model when the cluster has GPUs")
        _check_count("num_cpus_per_task", num_cpus_per_task, hint="; pass the CPUs one model may use, e.g. 1")
        if num_cpus_per_task == 0 and not num_gpus_per_task:
            raise ValueError("num_cpus_per_task: 0 with no GPUs would let Ray run every model at once on one "
                             "machine; pass num_cpus_per_task >= 1 (or some num_gpus_per_task)")
        _check_count("max_retries", max_retries, integer=True, hint="; pass 0 for no retries")
        _check_count("torch_threads", torch_threads, allow_none=True, minimum=1, integer=True,
                     hint="; pass None to use the task's CPUs")
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise ValueError(f"init_kwargs: expected a dict of ray.init arguments, got {type(init_kwargs).__name__}")
        self.address = address.strip() if address is not None else None
        self.num_gpus_per_task = num_gpus_per_task
        self.num_cpus_per_task = num_cpus_per_task
        self.max_retries = max_retries
        self.torch_threads = torch_threads
        self.init_kwargs = dict(init_kwargs or {})
        #: model names submitted / skipped (every row already stored) by the last :meth:`run`
        self.submitted: list[str] = []
        self.skipped: list[str] = []

    # -- cluster -----------------------------------------------------------------
    def _connect(self) -> bool:
        """Initialise Ray unless it already is; returns whether this call did (and so must shut it down)."""
        import ray

        if ray.is_initialized():
            return False
        kwargs = dict(self.init_kwargs)
        client = self.address is not None and "://" in self.address
        if not client:
            # a local cluster started here needs no network: no dashboard, no usage report
            kwargs.setdefault("include_dashboard", False)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=self.address, **kwargs)
        except ConnectionError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RayConnectionError(f"cannot reach a Ray cluster at address {self.address!r} ({first}); start one "
                                     "with `ray start --head`, or pass another address (None starts a local "
                                     "cluster)") from exc
        return True

    def _resources(self) -> tuple[float, float]:
        """(GPUs, CPUs) of one task, checked against the cluster's nodes."""
        import ray

        total = ray.cluster_resources()
        gpus = self.num_gpus_per_task
        if gpus is None:
            gpus = 1 if total.get("GPU", 0) > 0 else 0
        try:
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        except Exception:  # pragma: no cover - older Ray Client servers
            nodes = [total]
        fits = any(n.get("GPU", 0) >= gpus and n.get("CPU", 0) >= self.num_cpus_per_task for n in nodes)
        if not fits:
            warnings.warn(f"no node of the Ray cluster has {gpus} GPU(s) and {self.num_cpus_per_task} CPU(s) "
                          f"free for one model (cluster: {total.get('GPU', 0):g} GPUs, {total.get('CPU', 0):g} CPUs); "
                          "tasks wait until such a node joins. Lower num_gpus_per_task/num_cpus_per_task to run now",
                          RuntimeWarning, stacklevel=3)
        return gpus, self.num_cpus_per_task

    # -- scoring -----------------------------------------------------------------
    def run(self, jobs: Sequence[Job], store: Store, *, quiet: bool = False) -> None:
        """Submit the jobs with rows missing from ``store``; write each task's rows as it finishes."""
        self.submitted, self.skipped = [], []
        plans = []
        for job in jobs:
            try:
                job = job.resolved()  # the row keys: fingerprints of the model's and the data's content
            except Exception:  # noqa: BLE001 - the task fails the same way and records it as a row
                plans.append((job, frozenset()))
                continue
            planned = [job.key(row) for row in job.planned()]
            done = frozenset() if job.rerun else frozenset(_key(k) for k in planned if store.has(**k))
            if len(done) == len(planned):
                self.skipped.append(job.model_name)
            else:
                plans.append((job, done))
        if not plans:
            return
        import ray

        own = self._connect()
        try:
            gpus, cpus = self._resources()
            threads = self.torch_threads or max(1, int(cpus))
            task = ray.remote(score_on_worker).options(
                num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=True,
                name="flatplug-score")
            shared: dict[int, Any] = {}  # id(data reference) -> ObjectRef, so each is put once
            pending: dict[Any, Job] = {}
            try:
                for job, done in plans:
                    if id(job.data) not in shared:
                        shared[id(job.data)] = ray.put(job.data)
                    data = shared[id(job.data)]
                    pending[task.remote(dataclasses.replace(job, data=None), data, done, threads)] = job
                    self.submitted.append(job.model_name)
                device = "cuda" if gpus else "cpu"
                for rows in progress(self._finished(pending, device), desc="models", quiet=quiet,
                                     total=len(pending), leave=True):
                    for row in rows:
                        store.put(**row)
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if own:
                ray.shutdown()

    def _finished(self, pending: dict[Any, Job], device: str) -> Iterator[list[Row]]:
        """Each task's rows as it finishes (a failure row once Ray's retries ran out); empties ``pending``."""
        import ray
        from ray.exceptions import RayError

        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            job = pending.pop(ref)
            try:
                yield ray.get(ref)
            except RayError as exc:
                yield [self._failure(job, exc, device)]

    def _failure(self, job: Job, exc: BaseException, device: str) -> Row:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        message = f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
        return {**job.failure_key("worker"), "value": None,
                "details": {"stage": "worker", "attempts": self.max_retries + 1, "error_type": type(exc).__name__},
                "seconds": None, "status": "failed",
                "error": f"{message} (after {self.max_retries + 1} attempt(s) on Ray)", "device": device,
                "versions": versions()}


__all__ = ["RayConnectionError", "RayExecutor", "score_on_worker"]
