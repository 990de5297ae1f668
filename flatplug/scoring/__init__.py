"""Score model zoos: for each model, clean accuracy, robust accuracy under attacks, measures, a masking check.

Work is cut into one :class:`Job` per model. A job loads its model itself (so an executor can
run it on another process or machine from plain options), skips every row already in the
store, and hands each result to a sink as soon as it exists: the local executor writes it to
the store at once, so a killed run loses at most the row in flight. A model that fails to load
or score is recorded as a failure and the run goes on. Rows are keyed by content: the model's
and the data's fingerprints and the implementation version of the measure or attack.

Modules: :mod:`.specs` (model and data references), :mod:`.attack_specs`, :mod:`.measure_specs`,
:mod:`.job`, :mod:`.run` (one model), :mod:`.masking` (the gradient-masking check),
:mod:`.executors` (the local executor) and :mod:`.api` (:func:`score`).
"""

from __future__ import annotations

from .api import DEFAULT_STORE, score
from .attack_specs import (DEFAULT_ATTACK, attack_label, attack_parameters, attack_version, check_attack,
                           effective_settings, make_attack, parse_eps, resolve_attack, resolve_attacks, threat_norm)
from .executors import LocalExecutor
from .job import CLEAN_VERSION, Job, Planned, Row, resolve_device, versions
from .masking import MASKING_MARGIN, VANISHING_FRACTION, VANISHING_RATIO
from .measure_specs import check_measures, default_measures, measure_parameters, measure_version, resolve_measures
from .run import run_job
from .specs import DATA_CACHE_SIZE, DatasetSpec, InMemoryModel, ModelSpec, TensorData, as_data, as_model, clear_data_cache

__all__ = [
    "CLEAN_VERSION", "DATA_CACHE_SIZE", "DEFAULT_ATTACK", "DEFAULT_STORE", "DatasetSpec", "InMemoryModel", "Job",
    "LocalExecutor", "MASKING_MARGIN", "ModelSpec", "Planned", "Row", "TensorData", "VANISHING_FRACTION",
    "VANISHING_RATIO", "as_data", "as_model", "attack_label", "attack_parameters", "attack_version", "check_attack",
    "check_measures", "clear_data_cache", "default_measures", "effective_settings", "make_attack",
    "measure_parameters", "measure_version", "parse_eps", "resolve_attack",
    "resolve_attacks", "resolve_device", "resolve_measures", "run_job", "score", "threat_norm", "versions",
]
