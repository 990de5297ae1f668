"""flatplug: measure flatness, train for it, and test whether it buys adversarial robustness."""

from __future__ import annotations


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flatplug")
    except PackageNotFoundError:  # run from a source checkout that is not installed
        return "0.2.0"


__version__ = _version()

from . import measures  # noqa: E402
from .api import list_plugins, measure  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .types import LoadedModel, Measurement  # noqa: E402

__all__ = ["DatasetSpec", "LoadedModel", "Measurement", "ModelSpec", "hookimpl", "list_plugins", "measure",
           "measures", "score", "train", "__version__"]

#: names that load their subpackage on first use, keeping ``import flatplug`` light
_LAZY = {"train": ("training", "train"), "score": ("scoring", "score"), "ModelSpec": ("scoring", "ModelSpec"),
         "DatasetSpec": ("scoring", "DatasetSpec")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'flatplug' has no attribute {name!r}")
