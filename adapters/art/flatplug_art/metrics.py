"""Flatness metrics for ART classifiers, in the style of ``art.metrics.loss_sensitivity``.

Each takes ``(classifier, x, y)``: an ART ``PyTorchClassifier``, numpy inputs in the classifier's
units and labels (index or one-hot), and runs the core measure of the same name on the
classifier's network behind its preprocessing (``PreprocessedModel``), with the loss flatplug's
measures use (softmax cross-entropy). They return a float, like ART's metrics, or the full
:class:`flatplug.Measurement` with ``return_measurement=True``. Other keywords go to the core
measure (``k``, ``probes``, ``rho``, ``eps``, ...); ``layer`` and ``params`` name modules and
parameters as in the classifier's own network; ``eps``/``step_size`` of ``local_flatness`` are in
the classifier's units and its gradient norms are of each sample's own loss w.r.t. the classifier's
inputs: ``local_flatness(eps=0)`` is ``loss_sensitivity`` of a classifier whose loss sums over the
batch (ART differentiates the classifier's loss of the whole batch, so with the default mean
reduction ``loss_sensitivity`` is N times smaller). The classifier is left as it was (modes,
weights, gradients).

The same functions are registered as flatplug measures ``art.<name>``, called as
``fp.measure("art.hessian_trace", classifier, (x, y), probes=50)`` and returning the Measurement.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from flatplug import measures as core
from flatplug.sources import to_loader
from flatplug.types import Measurement

from ._build import check_lengths, resolve_layer, resolve_params
from ._classifier import check_classifier
from ._labels import index_labels
from ._space import InputSpace
from .preprocessed import PreprocessedModel


def _run(name: str, classifier, x, y, batch_size: int, return_measurement: bool, params: dict[str, Any]):
    check_classifier(classifier, name)
    space = InputSpace.of(classifier)
    if name == "local_flatness":
        space.require(name)
        check_lengths({k: params.get(k) for k in ("eps", "step_size")})
        params = space.scale_lengths(params)
    if "layer" in params:
        params["layer"] = resolve_layer(classifier, params["layer"])
    if "params" in params:
        params["params"] = resolve_params(classifier, params["params"])
    u = space.to_unit(x)
    idx = index_labels(y, u.shape[0], classifier.nb_classes)
    data = to_loader(torch.from_numpy(u), torch.from_numpy(idx), batch_size)
    params.setdefault("quiet", True)
    module = PreprocessedModel(classifier, space).to(classifier.device)
    m: Measurement = getattr(core, name)(module, data, **params)
    if name == "local_flatness" and not space.identity:  # d/dx = d/du / width
        m.value /= space.width
        m.per_sample = m.per_sample / space.width
        m.details["grad_norm_at_x"] /= space.width
        m.details.update(eps=m.details["eps"] * space.width, step_size=m.details["step_size"] * space.width)
    return m if return_measurement else float(m.value)


def relative_flatness(classifier, x, y, *, batch_size: int = 128, return_measurement: bool = False,
                      **params: Any) -> float | Measurement:
    """Relative flatness kappa_Tr of the logit layer (Petzka et al. 2021); lower is flatter."""
    return _run("relative_flatness", classifier, x, y, batch_size, return_measurement, params)


def hessian_eigenvalues(classifier, x, y, *, batch_size: int = 128, return_measurement: bool = False,
                        **params: Any) -> float | Measurement:
    """Largest Hessian eigenvalue of the mean loss (Lanczos); ``k=`` more in ``details["eigenvalues"]``."""
    return _run("hessian_eigenvalues", classifier, x, y, batch_size, return_measurement, params)


def hessian_trace(classifier, x, y, *, batch_size: int = 128, return_measurement: bool = False,
                  **params: Any) -> float | Measurement:
    """Trace of the loss Hessian (Hutchinson / Hutch++)."""
    return _run("hessian_trace", classifier, x, y, batch_size, return_measurement, params)


def sharpness(classifier, x, y, *, rho: float, batch_size: int = 128, return_measurement: bool = False,
              **params: Any) -> float | Measurement:
    """Worst-case (or ``kind="average"``) adaptive sharpness in a ``rho``-ball of weights."""
    return _run("sharpness", classifier, x, y, batch_size, return_measurement, {"rho": rho, **params})


def local_flatness(classifier, x, y, *, eps: float, batch_size: int = 128, return_measurement: bool = False,
                   **params: Any) -> float | Measurement:
    """Mean largest input-gradient norm in the ``eps``-ball (Xu et al. 2020), w.r.t. the classifier's inputs."""
    return _run("local_flatness", classifier, x, y, batch_size, return_measurement, {"eps": eps, **params})


METRICS: dict[str, Callable[..., Any]] = {
    fn.__name__: fn for fn in (relative_flatness, hessian_eigenvalues, hessian_trace, sharpness, local_flatness)
}


def as_measure(metric: Callable[..., Any]) -> Callable[..., Measurement]:
    """``metric`` as a flatplug measure: ``fn(classifier, (x, y), **params) -> Measurement``."""

    def measure(classifier, data, **params: Any) -> Measurement:
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise TypeError(f"art.{metric.__name__}: data must be a pair (x, y) of inputs and labels (numpy arrays "
                            "or tensors), with an ART classifier as the model")
        return metric(classifier, data[0], data[1], return_measurement=True, **params)

    measure.__name__ = f"art_{metric.__name__}"
    measure.__doc__ = f"``art.{metric.__name__}`` measure: {metric.__doc__}"
    return measure


#: registered measure name -> function
MEASURES = {f"art.{name}": as_measure(fn) for name, fn in METRICS.items()}


def not_in_scoring(name: str) -> Callable[..., None]:
    """``MeasureInfo.check`` of ``art.<name>``: scoring refuses it before any work. Scoring hands measures
    the zoo's torch modules, and these take an ART classifier (its preprocessing, clip values and
    loss); the core measure ``name`` scores the same quantity on the module."""

    def check(**_: Any) -> None:
        raise ValueError(f"art.{name} measures an ART classifier (fp.measure('art.{name}', classifier, (x, y))), "
                         f"and scoring passes the zoo's torch models; score the core measure {name!r} instead")

    return check
