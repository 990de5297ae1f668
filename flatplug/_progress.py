"""Progress bars that stay quiet off a TTY or when asked to."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, quiet: bool = False, total: int | None = None, leave: bool = False):
    """Wrap ``iterable`` in a tqdm bar unless ``quiet`` or stderr is not a terminal."""
    disable = quiet or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave)
