"""Every torchattacks attack by name: ``factory(model, **params) -> torchattacks.Attack``.

Names are the lower-cased class names (``"pgd"``, ``"apgd"``, ...), plus this adapter's
``"local_flatness_pgd"`` and ``"flat_region"``. ``"autoattack"`` is this adapter's
:class:`~flatplug_torchattacks.autoattack.AutoAttack`, the original AutoAttack's settings (100
iterations, per-image ensemble; ``version`` standard/plus/rand/custom) built from torchattacks'
members; torchattacks' own ``AutoAttack`` (10 iterations) is ``"autoattack_torchattacks"``. Parameters use flatplug's vocabulary
(``eps``, ``norm``, ``steps``, ``step_size``, ``random_start``) and pass through to the
constructor; this is the boundary where ``step_size`` becomes torchattacks' ``alpha``.
``factory.parameters`` lists the accepted names in flatplug's vocabulary; unknown ones are a
clear error listing them. ``norm`` may be spelt the flatplug way (``"linf"``, ``"l2"``) or the torchattacks
way (``"Linf"``, ``"L2"``); for an attack with a fixed norm it is checked and dropped, so the
core can pass ``attack="pgd", eps=8/255, norm="linf"`` to any attack of that norm. ``eps`` is
passed as ``max_epsilon`` to the attacks that call their radius so (PIFGSM, PIFGSMPP).

The torchattacks instances returned are of a subclass that checks its inputs first (images in
[0, 1], finite, one integer label per image within the model's classes), since torchattacks 3.5
silently clamps whatever it is given; apart from that they are torchattacks' own attacks.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torchattacks
from torchattacks.attack import Attack

from ._checks import validate
from ._options import flatplug_norm, torchattacks_norm
from .autoattack import AutoAttack
from .flat_region import FlatRegionAttack
from .local_flatness_pgd import LocalFlatnessPGD

#: torchattacks classes not registered, and why.
SKIPPED = {
    "MultiAttack": "combines attacks instead of attacking a model: build it from registered attacks, "
                   "torchattacks.MultiAttack([factory(model), ...])",
    "LGV": "needs a training data loader and trains surrogate models (not a model-plus-parameters attack)",
}

#: The norm of each attack whose norm is fixed (attacks with a ``norm`` parameter are absent).
FIXED_NORMS = {
    **dict.fromkeys(
        ["FGSM", "BIM", "RFGSM", "PGD", "EOTPGD", "FFGSM", "TPGD", "MIFGSM", "UPGD", "DIFGSM", "TIFGSM", "Jitter",
         "NIFGSM", "PGDRS", "SINIFGSM", "VMIFGSM", "VNIFGSM", "SPSA", "PIFGSM", "PIFGSMPP"], "linf"),
    **dict.fromkeys(["CW", "PGDL2", "PGDRSL2", "DeepFool", "EADEN"], "l2"),
    "EADL1": "l1",
    **dict.fromkeys(["SparseFool", "OnePixel", "Pixle", "JSMA"], "l0"),
    **dict.fromkeys(["VANILA", "GN"], "none"),
}

#: Where an L2 counterpart exists, the name to suggest for ``norm="l2"``.
_L2_COUNTERPART = {"PGD": "pgdl2", "PGDRS": "pgdrsl2"}


class ValidatedInputs:
    """Mixin: check ``forward``'s images and labels before the torchattacks attack runs."""

    def forward(self, images, labels=None, *args, **kwargs):
        images, labels = validate(self, images, labels)
        return super().forward(images, labels, *args, **kwargs)


@functools.lru_cache(maxsize=None)
def validated_class(cls: type) -> type:
    """``cls`` with input checks; same name, docstring and behaviour otherwise."""
    return type(cls.__name__, (ValidatedInputs, cls), {"__doc__": cls.__doc__, "__module__": __name__,
                                                        "__qualname__": cls.__name__})


#: registration info (``AttackInfo`` fields) of the attacks whose results differ from version 1
ATTACK_INFO = {
    "autoattack": {"version": "2", "paper": "Croce & Hein 2020, Reliable evaluation of adversarial robustness with "
                                            "an ensemble of diverse parameter-free attacks (ICML)"},
}

#: flatplug's name -> torchattacks' name (the one translation at this boundary)
TO_TORCHATTACKS = {"step_size": "alpha"}
FROM_TORCHATTACKS = {v: k for k, v in TO_TORCHATTACKS.items()}


def _accepted(cls: type) -> list[str]:
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, model
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _flatplug_names(accepted: list[str]) -> list[str]:
    return [FROM_TORCHATTACKS.get(name, name) for name in accepted]


def _resolve_norm(name: str, cls: type, params: dict[str, Any], accepted: list[str]) -> dict[str, Any]:
    if "norm" not in params:
        return params
    params = dict(params)
    if "norm" in accepted:
        if cls in (LocalFlatnessPGD, FlatRegionAttack):
            params["norm"] = flatplug_norm(params["norm"])
        else:
            params["norm"] = torchattacks_norm(params["norm"])
        return params
    fixed = FIXED_NORMS.get(cls.__name__)
    given = params.pop("norm")
    wanted = given.lower() if isinstance(given, str) else given
    if wanted in ("linf", "l2") or fixed is None:
        wanted = flatplug_norm(given)
    if wanted != fixed:
        hint = f"; use {_L2_COUNTERPART[cls.__name__]!r} for L2" if wanted == "l2" and cls.__name__ in _L2_COUNTERPART else ""
        raise ValueError(f"norm: {name!r} is a fixed-norm attack ({fixed}), got norm={given!r}{hint}")
    return params


def make_factory(name: str, cls: type, *, check_inputs: bool = True) -> Callable[..., Attack]:
    """``factory(model, **params)`` building ``cls`` (with input checks unless it checks itself)."""
    accepted = _accepted(cls)
    vocabulary = _flatplug_names(accepted)
    built = validated_class(cls) if check_inputs else cls

    def factory(model, **params: Any) -> Attack:
        for theirs, ours in FROM_TORCHATTACKS.items():
            if theirs in params and theirs in accepted:
                raise ValueError(f"attack {name!r}: pass {ours}= (flatplug's name for torchattacks' {theirs}); "
                                 f"got {theirs}={params[theirs]!r}")
        params = {TO_TORCHATTACKS.get(k, k) if TO_TORCHATTACKS.get(k) in accepted else k: v
                  for k, v in params.items()}
        params = _resolve_norm(name, cls, params, accepted)
        if "eps" in params and "eps" not in accepted and "max_epsilon" in accepted:  # PIFGSM, PIFGSMPP
            if "max_epsilon" in params:
                raise ValueError(f"attack {name!r}: pass eps or max_epsilon (the same radius), not both")
            params["max_epsilon"] = params.pop("eps")
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            hint = ""
            if "eps" in unknown:
                hint = (" (it has no eps bound: it looks for small perturbations of any size, so it does not give "
                        "robust accuracy at a given eps)")
            raise ValueError(
                f"attack {name!r} ({cls.__name__}) takes no parameter {', '.join(map(repr, unknown))}{hint}; "
                f"it accepts: {', '.join(vocabulary) or '(none)'}"
            )
        return built(model, **params)

    factory.__name__ = f"{name}_factory"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"Build torchattacks-style {cls.__name__}(model, **params); parameters: {', '.join(vocabulary)}."
    factory.attack_class = cls  # type: ignore[attr-defined]
    factory.parameters = tuple(vocabulary)  # type: ignore[attr-defined]
    return factory


def torchattacks_classes() -> dict[str, type]:
    """Registered torchattacks classes by registered name."""
    out = {}
    for cls_name in torchattacks.__all__:
        if cls_name in SKIPPED:
            continue
        cls = getattr(torchattacks, cls_name)
        if isinstance(cls, type) and issubclass(cls, Attack):
            out[cls_name.lower()] = cls
    return out


def attack_factories() -> dict[str, Callable[..., Attack]]:
    """Every registered attack: torchattacks' (checked inputs) and this adapter's own."""
    classes = torchattacks_classes()
    classes["autoattack_torchattacks"] = classes["autoattack"]
    classes["autoattack"] = AutoAttack
    factories = {name: make_factory(name, cls) for name, cls in classes.items()}
    factories["local_flatness_pgd"] = make_factory("local_flatness_pgd", LocalFlatnessPGD, check_inputs=False)
    factories["flat_region"] = make_factory("flat_region", FlatRegionAttack, check_inputs=False)
    return factories
