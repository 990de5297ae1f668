"""flatplug: measure flatness, train for it, and test whether it buys adversarial robustness."""

from __future__ import annotations

__version__ = "0.1.0"

from . import measures
from .api import list_plugins, measure
from .hookspecs import hookimpl
from .types import LoadedModel, Measurement

__all__ = ["LoadedModel", "Measurement", "hookimpl", "list_plugins", "measure", "measures", "__version__"]
