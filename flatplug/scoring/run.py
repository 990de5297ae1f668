"""Scoring one model: load it, compute each missing row, hand every row to a sink as it exists.

Clean accuracy and the measures that declare ``MeasureInfo.from_forward`` share one
full-precision forward pass. A CUDA out-of-memory error halves the batch size and retries the
row (down to batch 1). A model that fails to load, or a row that fails, becomes a ``failed`` row
with its error, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
import warnings
from typing import Any, Callable

import torch
from torch import nn

from .. import plugins
from .._progress import progress
from .._resources import exact_precision, forward_precision, free_cuda_memory, is_oom, prefer_channels_last, suggest_batch_size
from .._state import preserved
from ..attacks import correct_under
from ..registry import ForwardPass
from .attack_specs import attack_label, effective_settings, make_attack, threat_norm
from .job import Job, Planned, Row, resolve_device, versions
from .measure_specs import takes_quiet
from .masking import KEY, comparison_check, same_threat, vanishing_check, vanishing_gradients

_MODEL_KEYS = ("architecture", "checkpoint", "manifest", "training", "source", "num_parameters")


def _check_input_shape(loaded, x: torch.Tensor) -> None:
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


class _ModelRun:
    """One loaded model on its data: computes rows, sharing one forward pass where it can."""

    def __init__(self, job: Job, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.job, self.model, self.x, self.y, self.batch_size = job, model, x, y, batch_size
        self._forward: ForwardPass | None = None
        self.robust: dict[int, float] = {}  # attack index -> robust accuracy, for the masking check

    @property
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.x[i:i + self.batch_size], self.y[i:i + self.batch_size])
                for i in range(0, len(self.y), self.batch_size)]

    def forget(self) -> None:
        self._forward = None

    def forward(self) -> ForwardPass:
        """One full-precision pass: logits, and the features of the last ``nn.Linear`` when it produces them."""
        if self._forward is None:
            from ..features import features_and_logits, find_layer

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

    def compute(self, row: Planned) -> tuple[float, dict[str, Any], Any]:
        details: dict[str, Any] = {"n": int(len(self.y)), "batch_size": self.batch_size}
        if row.kind == "accuracy":
            logits = self.forward().logits
            return float((logits.argmax(1) == self.y).float().mean()), details, None
        if row.kind == "attack":
            return self.attack(row, details)
        info = plugins.info("measures", row.name)
        if (info.from_forward is not None and set(row.params) <= info.forward_params
                and self.forward().features is not None):
            with exact_precision():
                result = info.from_forward(self.forward(), **row.params)
            details["shared_forward"] = True
        else:
            from ..api import measure

            quiet = {"quiet": True} if takes_quiet(row.name) else {}
            with exact_precision():
                result = measure(row.name, self.model, self.batches, **quiet, **row.params)
        details.update(result.details)
        return result.value, details, result.per_sample

    def attack(self, row: Planned, details: dict[str, Any]) -> tuple[float, dict[str, Any], None]:
        """Robust accuracy under the attack, with its gradient-masking evidence (:mod:`.masking`)."""
        spec = {"name": row.name, **{k: v for k, v in row.params.items() if k != "precision"}}  # precision: key only
        n_classes = int(self.forward().logits.shape[1])
        attack = make_attack(self.model, spec, n_classes=n_classes)
        torch.manual_seed(0)  # attacks that draw from the global RNG (torchattacks) are repeatable
        with forward_precision(self.job.device, self.job.precision):
            correct = correct_under(self.model, self.batches, attack)
        value = float(correct.float().mean())
        details.update(precision=self.job.precision,
                       attack=attack_label({"name": row.name, **effective_settings(spec, n_classes=n_classes)}))
        index = self.job.attacks.index(spec)
        self.robust[index] = value
        first = self.job.attacks[0]
        if index == 0 and first.get("eps"):
            with preserved(self.model):
                vanish = vanishing_gradients(self.model, self.batches, float(first["eps"]), threat_norm(first))
            details[KEY] = vanishing_check(float(vanish.float().mean()))
        elif index > 0 and 0 in self.robust and same_threat(first, spec, threat_norm):
            details[KEY] = comparison_check(attack_label(first), self.robust[0], attack_label(spec), value)
        return value, details, None


def _model_details(loaded) -> dict[str, Any]:
    return {k: loaded.metadata[k] for k in _MODEL_KEYS if loaded.metadata.get(k) is not None}


def run_job(job: Job, sink: Callable[[Row], None], *, done: Callable[[dict], bool] = lambda key: False,
            quiet: bool = True) -> None:
    """Score one model, calling ``sink(row)`` as each result exists; skip keys for which ``done(key)``.

    Fingerprints the job does not carry yet are computed here (a data fingerprint it carries is
    checked against the data loaded here, so a worker never files results under other data).
    """
    if job.device is None:
        job = dataclasses.replace(job, device=resolve_device(None))
    common = dict(device=job.device, versions=versions())

    def failure(row: Planned | None, exc: BaseException, seconds: float | None) -> Row:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        key = job.key(row) if row is not None else job.failure_key("load")
        return {**key, "value": None, "details": {"stage": key["kind"]}, "seconds": seconds, "status": "failed",
                "error": detail, **common}

    start = time.perf_counter()
    loaded = None
    try:
        expected = job.data_fingerprint
        if job.model_fingerprint is None:
            fingerprint = job.model.fingerprint()
            if fingerprint is None:  # the source cannot say without loading the model
                loaded = job.model.load(job.device)
                fingerprint = job.model.fingerprint(loaded)
            job = dataclasses.replace(job, model_fingerprint=fingerprint)
        job = job.resolved()
        if expected is not None and job.data.fingerprint() != expected:
            raise RuntimeError(f"the data loaded here for {job.dataset_key} differ from the data the run was "
                               "started with (another file at that path?); score where both see the same files")
    except Exception as exc:  # recorded, and the run goes on
        sink(failure(None, exc, None))
        return
    todo = job.missing(done)
    if not todo:
        return
    try:
        loaded = loaded or job.model.load(job.device)
        x_all, y_all = job.data.load()
        x_all, y_all = x_all.to(job.device), y_all.to(job.device)
        _check_input_shape(loaded, x_all)
        model = prefer_channels_last(loaded.module.to(job.device).eval(), job.device, x_all)
        batch_size = job.batch_size or suggest_batch_size(model, x_all, job.device)
        load_seconds = time.perf_counter() - start
    except Exception as exc:
        sink(failure(None, exc, None))
        return
    run = _ModelRun(job, model, x_all, y_all, batch_size)
    bar = progress(todo, desc=job.model_name, quiet=quiet)
    for row in bar:
        bar.set_postfix_str(f"{row.kind} {row.name}", refresh=True)  # show what runs now, however fast the rows are
        start = time.perf_counter()
        try:
            while True:
                try:
                    value, details, per_sample = run.compute(row)
                    break
                except Exception as exc:
                    if not is_oom(exc) or run.batch_size == 1:
                        raise
                    run.batch_size //= 2
                    run.forget()
                    free_cuda_memory(job.device)
                    warnings.warn(f"{job.model_name}: out of memory in {row.kind} {row.name!r}; retrying with batch "
                                  f"size {run.batch_size}", RuntimeWarning, stacklevel=2)
            if row.kind == "accuracy":
                details.update(load_seconds=load_seconds, data=job.data.describe(), model=_model_details(loaded))
            if per_sample is not None:
                details["per_sample_mean"] = float(per_sample.float().mean())
            sink({**job.key(row), "value": value, "details": details, "seconds": time.perf_counter() - start,
                  "status": "ok", "error": None, **common})
        except Exception as exc:
            sink(failure(row, exc, time.perf_counter() - start))
