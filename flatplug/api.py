"""The top-level calls: ``fp.measure`` and ``fp.list_plugins``."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from . import plugins
from .types import Measurement


def measure(name: str, model: nn.Module, data: Any, **params: Any) -> Measurement:
    """Run the registered measure ``name`` on ``model`` over ``data`` (``(x, y)`` or batches)."""
    fn = plugins.get("measures", name)
    start = time.perf_counter()
    result = fn(model, data, **params)
    if not isinstance(result, Measurement):
        raise TypeError(f"measure {name!r} returned {type(result).__name__}, expected a flatplug.Measurement")
    if not result.seconds:
        result.seconds = time.perf_counter() - start
    return result


def list_plugins(kind: str) -> list[str]:
    """Names registered for ``kind``: "measures", "attacks", "trainers", "sources", "datasets", "executors"."""
    return plugins.list_plugins(kind)
