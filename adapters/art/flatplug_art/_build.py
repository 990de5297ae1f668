"""Checked, unit-converted construction of a core training method for an ART classifier."""

from __future__ import annotations

from typing import Any

from flatplug import plugins
from flatplug.ext import check_positive, select_params
from flatplug.features import find_layer
from flatplug.training import TrainingMethod

from ._classifier import adopt
from ._space import INPUT_LENGTHS, InputSpace
from .attack import inner_attack


def given(**params: Any) -> dict[str, Any]:
    """The keyword arguments the user gave: those not left at the ``None`` sentinel."""
    return {k: v for k, v in params.items() if v is not None}


def check_lengths(params: dict[str, Any]) -> None:
    """Radii and step sizes (ART units) are non-negative / positive numbers, checked before any conversion."""
    for key in INPUT_LENGTHS:
        value = params.get(key)
        if value is None:
            continue
        check_positive(value, key, allow_zero=(key == "eps"))


def resolve_layer(classifier, layer):
    """A layer named as in the classifier's own network (e.g. ``"fc2"``) -> that module (the wrapper adds a prefix)."""
    if layer is None or not isinstance(layer, str):
        return layer
    return find_layer(classifier.model, layer)[1]


def resolve_params(classifier, params):
    """Parameter names of the classifier's own network -> the parameter tensors (matched by identity)."""
    if params is None:
        return None
    return [p for _, p in select_params(classifier.model, params)]


def build_method(name: str, params: dict[str, Any], classifier, space: InputSpace, who: str) -> TrainingMethod:
    """The registered method ``name`` with ``params`` given in the classifier's units (eps, step sizes, layer, attack).

    Only the parameters given are passed, so the core method's defaults are the defaults; the
    method trains the classifier's own loss (:func:`flatplug_art._classifier.adopt`).
    """
    cls = plugins.get("trainers", name)
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise TypeError(
            f"{who}: method {name!r} is not a flatplug training method (it is {getattr(cls, '__name__', cls)!r}); "
            "pass one of the core methods such as 'sam', 'asam', 'fam', 'pgd-at', 'lfr', 'awp'"
        )
    if cls.needs_unit_inputs:
        space.require(f"{who}: method {name!r}")
    check_lengths(params)
    params = space.scale_lengths(params)
    if "layer" in params:
        params["layer"] = resolve_layer(classifier, params["layer"])
    if "attack" in params:
        params["attack"] = inner_attack(params["attack"], space, classifier.nb_classes)
    try:
        method = cls(**params)
    except TypeError as exc:
        raise TypeError(f"{who}: method {name!r}: {exc}") from None
    return adopt(method, classifier, who)
