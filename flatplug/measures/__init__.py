"""Flatness measures, one module per family; each is ``fn(model, data, **params) -> Measurement``.

Modules load on first use, so ``import flatplug`` stays cheap.
"""

from __future__ import annotations

import importlib

#: public measure name -> module that defines a function of the same name
MEASURES = {
    "relative_flatness": "relative_flatness",
    "hessian_eigenvalues": "hessian_eigenvalues",
    "hessian_trace": "hessian_trace",
    "hessian_density": "hessian_density",
    "sharpness": "sharpness",
    "loss_landscape": "loss_landscape",
    "local_flatness": "local_flatness",
}

__all__ = sorted(MEASURES)


def __getattr__(name: str):
    if name in MEASURES:
        fn = getattr(importlib.import_module(f"{__name__}.{MEASURES[name]}"), name)
        globals()[name] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
