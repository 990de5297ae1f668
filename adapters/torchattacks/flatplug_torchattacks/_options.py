"""Parameter spellings shared by the attacks: torchattacks writes norms as ``"Linf"``/``"L2"``, flatplug as ``"linf"``/``"l2"``."""

from __future__ import annotations

import math

#: accepted spelling (lower case) -> flatplug's spelling
_NORMS = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l2": "l2"}


def flatplug_norm(norm: str, name: str = "norm") -> str:
    """``"Linf"``/``"linf"`` -> ``"linf"``, ``"L2"``/``"l2"`` -> ``"l2"``; anything else is a clear error."""
    key = norm.lower() if isinstance(norm, str) else None
    if key not in _NORMS:
        raise ValueError(f"{name}: expected 'Linf' or 'L2' (any case), got {norm!r}")
    return _NORMS[key]


def torchattacks_norm(norm: str, name: str = "norm") -> str:
    """The torchattacks spelling, ``"Linf"`` or ``"L2"``."""
    return {"linf": "Linf", "l2": "L2"}[flatplug_norm(norm, name)]


def check_radius(value: float, name: str) -> float:
    """A non-negative finite number (eps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative finite number, got {value!r}")
    return float(value)


def check_step(value: float, name: str) -> float:
    """A positive finite number (a step size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def check_count(value: int, name: str, minimum: int = 0) -> int:
    """An integer at least ``minimum`` (steps)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value
