"""``fp.score``: every model on one dataset, into a results store, as one :class:`Job` per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .. import plugins
from .._resources import check_precision
from ..store import Store, canonical_params
from .attack_specs import attack_version, check_attack, resolve_attacks
from .job import Job, resolve_device
from .measure_specs import check_measures, resolve_measures
from .specs import as_data, as_model

DEFAULT_STORE = "flatplug-results.db"


def score(
    models: Iterable[Any],
    dataset: Any,
    *,
    measures: Any = None,
    attack: Any = None,
    store: str | Path | Store = DEFAULT_STORE,
    executor: str = "local",
    device: str | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    quiet: bool = False,
    rerun: bool = False,
    **executor_options: Any,
):
    """Score every model on ``dataset``; returns this run's rows of the store as a DataFrame.

    ``models``: :class:`ModelSpec` (loaded by the executor) or ready :class:`~flatplug.LoadedModel`
    objects. ``dataset``: a :class:`DatasetSpec`, or ``(x, y)`` / ``(name, x, y)`` tensors.
    ``measures``: names, ``{name: params}``, or None for :func:`default_measures`.
    ``attack``: a name, ``{"name": ..., "eps": ..., ...}`` or a list of those (default PGD-10 at
    8/255); the first is the main attack, and each model's gradient-masking check compares it with
    the later ones (:mod:`flatplug.scoring.masking`). A registered attack (e.g. from the
    torchattacks adapter) is used when present, else the core PGD. ``executor``: ``"local"`` or any
    registered executor (``"ray"``). ``batch_size``: None picks one from free GPU memory (128 on
    the CPU); an out-of-memory error halves it. ``precision``: ``"fp32"``, ``"tf32"`` or ``"bf16"``
    for clean accuracy and attacks on CUDA; second-order measures always run in full precision.

    Every row is keyed by the model's and the data's content fingerprints and by the
    implementation version of what computed it, so a rerun skips exactly the rows already
    computed from the same weights and images; ``rerun=True`` computes every row again.
    """
    check_precision(precision, None)  # the name, before anything is loaded; the device below
    refs = [as_model(m) for m in models]
    if not refs:
        raise ValueError("models: nothing to score; pass at least one model")
    attacks = resolve_attacks(attack)
    for spec in attacks:
        attack_version(spec["name"])  # unknown attacks fail before any work, with the closest match
        check_attack(spec)
    chosen = resolve_measures(measures, attacks[0])
    check_measures(chosen)
    data = as_data(dataset)
    data_fp = data.fingerprint()  # loads the data: bad paths or n fail here, before any work
    for ref in refs:
        ref.check()
    # a remote executor picks the device where the task runs (a CPU-only head can drive GPU workers)
    dev = resolve_device(device) if executor == "local" else (None if device is None else str(device))
    check_precision(precision, dev)
    runner = plugins.get("executors", executor)(**executor_options)
    jobs = []
    for ref in refs:
        job = Job(ref, data, chosen, attacks, dev, batch_size, precision, rerun, data_fingerprint=data_fp)
        try:
            job = job.resolved()
        except Exception:  # noqa: BLE001 - the job records this failure as a row when it runs
            pass
        jobs.append(job)
    own = not isinstance(store, Store)
    db = Store(store) if own else store
    try:
        runner.run(jobs, db, quiet=quiet)
        frame = db.to_dataframe()
    finally:
        if own:
            db.close()
    return frame[this_runs_rows(frame, jobs)].reset_index(drop=True)


def _key_tuple(key: dict[str, Any]) -> tuple:
    return (key["model"], key["source"], key["dataset"], key["model_fingerprint"], key["data_fingerprint"],
            key["kind"], key["name"], key["impl_version"], canonical_params(key["params"]))


def this_runs_rows(frame, jobs: list[Job]) -> list[bool]:
    """Which store rows answer this run: the keys its jobs planned (reused or computed now: not rows of
    other settings or older implementation versions of the same model and data), and a model's load
    failure only while some of its planned rows are missing (a model that loaded has every planned
    row, ok or failed, so a load failure beside them is an older run's; no clocks compared, since
    rows written by remote workers carry their own)."""
    keys = list(zip(frame["model"], frame["source"], frame["dataset"], frame["model_fingerprint"],
                    frame["data_fingerprint"], frame["kind"], frame["name"], frame["impl_version"], frame["params"]))
    present = set(keys)
    planned: set[tuple] = set()
    load_failures: set[tuple] = set()
    for j in jobs:
        mine = {_key_tuple(j.key(row)) for row in j.planned()}
        planned |= mine
        if not mine <= present:
            load_failures.add(_key_tuple(j.failure_key("load")))
    return [k in planned or k in load_failures for k in keys]
