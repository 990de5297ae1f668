"""The core's own plugin: registers the built-in measures (and, later, attacks, trainers, ...)."""

from __future__ import annotations

from . import measures
from .hookspecs import hookimpl


@hookimpl
def flatplug_register_measures(register):
    for name in measures.MEASURES:
        register(name, getattr(measures, name))
