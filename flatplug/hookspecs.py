"""The ``flatplug_*`` hook specifications: each hook receives a ``register(name, obj)`` callback."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("flatplug")
hookimpl = pluggy.HookimplMarker("flatplug")


@hookspec
def flatplug_register_measures(register):
    """Register measures: ``register(name, fn)`` with ``fn(model, data, **params) -> Measurement``."""


@hookspec
def flatplug_register_attacks(register):
    """Register attacks: ``register(name, factory)`` with ``factory(model, **params)`` returning an attack."""


@hookspec
def flatplug_register_trainers(register):
    """Register training methods: ``register(name, trainer)``."""


@hookspec
def flatplug_register_sources(register):
    """Register model sources: ``register(name, source)``; a source lists and loads models."""


@hookspec
def flatplug_register_datasets(register):
    """Register datasets: ``register(name, loader)``."""


@hookspec
def flatplug_register_executors(register):
    """Register executors that run scoring jobs: ``register(name, executor)``."""
