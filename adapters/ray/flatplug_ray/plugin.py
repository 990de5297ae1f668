"""The ``flatplug`` entry point: registers the ``ray`` executor (Ray itself is imported on first use)."""

from __future__ import annotations

from flatplug.hookspecs import hookimpl

from .executor import RayExecutor


@hookimpl
def flatplug_register_executors(register):
    register("ray", RayExecutor)
