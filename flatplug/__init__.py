"""flatplug: measure flatness, train for it, and test whether it buys adversarial robustness."""

from __future__ import annotations

__version__ = "0.1.0"

from . import measures
from .api import list_plugins, measure
from .hookspecs import hookimpl
from .types import LoadedModel, Measurement

__all__ = ["LoadedModel", "Measurement", "hookimpl", "list_plugins", "measure", "measures", "score", "train", "__version__"]


def __getattr__(name: str):
    # ``fp.train`` and ``fp.score`` load their packages on first use, keeping ``import flatplug`` light.
    if name == "train":
        from .training import train

        return train
    if name == "score":
        from .scoring import score

        return score
    raise AttributeError(f"module 'flatplug' has no attribute {name!r}")
