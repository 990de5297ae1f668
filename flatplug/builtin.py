"""The core's own plugin: registers the built-in measures and training methods."""

from __future__ import annotations

from . import measures
from .hookspecs import hookimpl


@hookimpl
def flatplug_register_measures(register):
    for name in measures.MEASURES:
        register(name, measures.MEASURES[name])


@hookimpl
def flatplug_register_trainers(register):
    from .training import METHODS

    for name, cls in METHODS.items():
        register(name, cls)
