"""Replace a method on some module instances for the length of a block, and put it back."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from torch import nn


@contextmanager
def instance_override(modules: Sequence[nn.Module], attr: str, make: Callable[[nn.Module], object]) -> Iterator[int]:
    """Within the block each module's ``attr`` is the instance attribute ``make(module)`` (shadowing
    the class's method, so hooks and other modules are untouched); removed on exit, also after an
    error. Yields how many modules were switched."""
    for m in modules:
        setattr(m, attr, make(m))
    try:
        yield len(modules)
    finally:
        for m in modules:
            vars(m).pop(attr, None)
