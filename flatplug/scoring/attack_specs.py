"""Attack settings for scoring: parsing, defaults, the attack object, and its implementation version.

Settings use flatplug's one vocabulary (``eps``, ``norm``, ``steps``, ``step_size``,
``random_start``); adapters translate at their boundary (torchattacks' ``alpha``), so the same
spec runs on the torchattacks adapter's PGD and on the core fallback.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable

import torch
from torch import nn

from .. import plugins
from ..attacks import pgd

DEFAULT_ATTACK = {"name": "pgd", "eps": 8 / 255, "steps": 10}
#: The parameters the core PGD fallback takes (``pgd`` and ``pgdl2`` when no plugin registers them).
CORE_PGD_PARAMETERS = ("eps", "norm", "steps", "step_size", "random_start", "seed")
#: Implementation version of the core PGD fallback (part of every row key it produces).
CORE_PGD_VERSION = "flatplug:1"

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def parse_eps(text: str | float) -> float:
    """``"8/255"``, ``"0.25/255"``, ``"0.03"`` or a number, as a float (a fraction is evaluated
    exactly, then rounded once)."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        parts = [Fraction(part.strip()) for part in text.split("/")]  # Fraction("0.25/255") itself fails
        if len(parts) > 2:
            raise ValueError
        return float(parts[0] / parts[1] if len(parts) == 2 else parts[0])
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps: expected a number or a fraction such as 8/255 or 0.5/255, got {text!r}") from None


def is_core_pgd(name: str) -> bool:
    """``pgd``/``pgdl2`` run by the core because no plugin registers that name."""
    return name in ("pgd", "pgdl2") and name not in plugins.list_plugins("attacks")


def attack_parameters(name: str) -> tuple[str, ...] | None:
    """The parameters attack ``name`` accepts (its factory's ``parameters``), None when it does not say."""
    if is_core_pgd(name):
        return CORE_PGD_PARAMETERS
    accepted = getattr(plugins.get("attacks", name), "parameters", None)
    return tuple(accepted) if accepted is not None else None


def attack_version(name: str) -> str:
    """``plugin:version`` of the attack that runs under ``name`` (the core PGD fallback included)."""
    if is_core_pgd(name):
        return CORE_PGD_VERSION
    record = plugins.record("attacks", name)
    return f"{record.plugin}:{record.info.version}"


def make_attack(model: nn.Module, spec: dict[str, Any], *, n_classes: int | None = None) -> Attack:
    """A registered attack (``factory(model, **params)``), else the core PGD for ``pgd``/``pgdl2``.

    ``n_classes`` (the model's number of logits) is passed to attacks that take it and were not
    given it (AutoAttack's targeted attacks need it; torchattacks' default is 10).
    """
    name = spec["name"]
    params = {k: v for k, v in spec.items() if k != "name"}
    if not is_core_pgd(name):
        factory = plugins.get("attacks", name)  # unknown names raise with the closest match
        accepted = getattr(factory, "parameters", None)
        if accepted is not None and "eps" not in accepted:
            params.pop("eps", None)  # an unbounded attack (cw, deepfool): eps does not apply
        if (accepted is not None and {"eps", "steps", "step_size"} <= set(accepted) and "step_size" not in params
                and "eps" in params):
            steps = params.get("steps") or effective_settings(spec).get("steps")
            if steps:  # the core PGD's rule, also when the attack's own default number of steps is used
                params["step_size"] = 2.5 * float(params["eps"]) / int(steps)
        if accepted is not None and "n_classes" in accepted and "n_classes" not in params and n_classes:
            params["n_classes"] = int(n_classes)
        return factory(model, **params)
    norm = core_norm(name, params.pop("norm", None))
    unknown = set(params) - set(CORE_PGD_PARAMETERS)
    if unknown:
        raise ValueError(f"attack {name!r} (core PGD) takes {', '.join(CORE_PGD_PARAMETERS)}; got {sorted(unknown)}")
    return lambda x, y: pgd(model, x, y, norm=norm, **params)


def core_norm(name: str, norm: Any) -> str:
    """The core PGD's norm: ``pgdl2`` is L2 (a ``norm`` given must say so; it was passed twice), ``pgd``
    takes ``norm`` (default L-inf)."""
    if norm is None:
        return "l2" if name == "pgdl2" else "linf"
    wanted = str(norm).lower()
    if wanted not in ("linf", "l2"):
        raise ValueError(f"norm: expected 'linf' or 'l2', got {norm!r}")
    if name == "pgdl2" and wanted != "l2":
        raise ValueError(f"norm: 'pgdl2' is the L2 PGD, got norm={norm!r}; use 'pgd' for L-inf")
    return wanted


def effective_settings(spec: dict[str, Any], *, n_classes: int | None = None) -> dict[str, Any]:
    """Every setting the attack runs with: the spec's, plus the constructor defaults it did not set
    (when the factory names its class, as the torchattacks adapter's do), in flatplug's vocabulary."""
    import inspect

    name = spec["name"]
    settings = {k: v for k, v in spec.items() if k != "name"}
    if is_core_pgd(name):
        defaults = {k: p.default for k, p in inspect.signature(pgd).parameters.items()
                    if k in CORE_PGD_PARAMETERS and p.default is not inspect.Parameter.empty}
        defaults.setdefault("step_size", None)
        if defaults.get("step_size") is None and settings.get("eps") is not None:
            defaults["step_size"] = 2.5 * float(settings["eps"]) / int(settings.get("steps", defaults.get("steps", 10)))
        return {**defaults, **({"norm": "l2"} if name == "pgdl2" else {}), **settings}
    factory = plugins.get("attacks", name)
    cls = getattr(factory, "attack_class", None)
    accepted = getattr(factory, "parameters", None)
    if cls is None or accepted is None:
        return settings
    names = {"alpha": "step_size"}
    defaults = {}
    for key, param in list(inspect.signature(cls.__init__).parameters.items())[2:]:
        ours = names.get(key, key)
        if ours in accepted and param.default is not inspect.Parameter.empty:
            defaults[ours] = param.default
    if "eps" not in accepted:
        settings.pop("eps", None)
    if "n_classes" in accepted and n_classes and "n_classes" not in settings:
        settings["n_classes"] = int(n_classes)
    merged = {**defaults, **settings}
    if {"eps", "steps", "step_size"} <= set(accepted) and "step_size" not in settings and merged.get("steps"):
        merged["step_size"] = 2.5 * float(merged["eps"]) / int(merged["steps"])  # as make_attack sets it
    return merged


def check_attack(spec: dict[str, Any]) -> None:
    """Refuse an attack spec before any work: unknown name (closest match), a parameter the attack
    does not take, a bad value it rejects, or an L-inf radius above 1 (the whole [0, 1] image range)."""
    name = spec["name"]
    eps = spec.get("eps")
    if eps is not None and threat_norm(spec) == "linf" and float(eps) > 1:
        raise ValueError(f"eps: {eps:g} is larger than the whole [0, 1] range of the images for an L-inf ball; "
                         f"radii are fractions of the pixel range, e.g. {eps:g}/255 (8/255 is the usual CIFAR-10 radius)")
    if is_core_pgd(name):
        unknown = sorted(set(spec) - {"name", *CORE_PGD_PARAMETERS})
        if unknown:
            raise ValueError(f"attack {name!r} (core PGD) takes no parameter {', '.join(map(repr, unknown))}; it "
                             f"accepts: {', '.join(CORE_PGD_PARAMETERS)}")
        core_norm(name, spec.get("norm"))
        return
    probe = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))  # a stand-in model: constructors check their settings
    try:
        make_attack(probe, spec)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        raise ValueError(text if name in text else f"attack {name!r}: {text}") from None


def threat_norm(attack: dict[str, Any]) -> str:
    """The norm of the attack's ball: its ``norm`` setting, else ``l2`` for ``*l2`` attacks, else ``linf``."""
    norm = attack.get("norm")
    if isinstance(norm, str):
        return {"linf": "linf", "l2": "l2"}.get(norm.lower(), norm.lower())
    return "l2" if attack["name"].lower().endswith("l2") else "linf"


def resolve_attack(attack: Any) -> dict[str, Any]:
    """One attack spec ``{"name": ..., "eps": ..., ...}`` from a name, a dict or None (PGD-10 at 8/255)."""
    if attack is None:
        return dict(DEFAULT_ATTACK)
    if isinstance(attack, str):
        spec = {"name": attack, "eps": DEFAULT_ATTACK["eps"]}
        if attack in ("pgd", "pgdl2"):
            spec["steps"] = DEFAULT_ATTACK["steps"]
    elif isinstance(attack, dict):
        spec = dict(attack)
        spec.setdefault("name", "pgd")
        spec.setdefault("eps", DEFAULT_ATTACK["eps"])
    else:
        raise TypeError(f"attack: expected a name, a dict of settings or a list of those, got {type(attack).__name__}")
    spec["eps"] = parse_eps(spec["eps"])
    if spec["eps"] < 0:
        raise ValueError(f"eps: expected a non-negative radius, got {spec['eps']}")
    return spec


def resolve_attacks(attack: Any) -> list[dict[str, Any]]:
    """A list of attack specs from one attack (see :func:`resolve_attack`) or a list of them.

    The first attack is the run's main attack (its robust accuracy is what measures follow); the
    gradient-masking check compares it with the later ones (``flatplug.scoring.masking``).
    """
    items = list(attack) if isinstance(attack, (list, tuple)) else [attack]
    if not items:
        raise ValueError("attack: an empty list; name at least one attack, e.g. 'pgd'")
    specs = [resolve_attack(a) for a in items]
    for spec in specs:  # attacks with a random seed get 0 unless told: a rerun gives the same numbers
        accepted = attack_parameters(spec["name"])
        if accepted is not None and "seed" in accepted and not is_core_pgd(spec["name"]):
            spec.setdefault("seed", 0)
    seen = set()
    for spec in specs:
        key = repr(sorted(spec.items()))
        if key in seen:
            raise ValueError(f"attack: {spec['name']!r} is listed twice with the same settings")
        seen.add(key)
    return specs


def format_value(key: str, value: Any) -> str:
    """A setting as a reader writes it: radii that are whole 255ths as ``8/255``."""
    if isinstance(value, float) and "eps" in key and 0 < value <= 1:
        k = value * 255
        if abs(k - round(k)) < 1e-6 and round(k) >= 1:
            return f"{int(round(k))}/255"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def attack_label(spec: dict[str, Any]) -> str:
    """``pgd(eps=8/255, steps=10)``: an attack with all its settings."""
    settings = ", ".join(f"{k}={format_value(k, v)}" for k, v in sorted(spec.items()) if k != "name")
    return f"{spec['name']}({settings})"
