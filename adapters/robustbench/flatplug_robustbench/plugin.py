"""The ``flatplug`` entry point: registers the ``robustbench`` source and the cifar10/cifar100/imagenet datasets.

Importing this module is cheap: robustbench itself (and timm) is imported on the first listing,
load or dataset call.
"""

from __future__ import annotations

from flatplug.hookspecs import hookimpl

from .datasets import DATASETS
from .source import RobustBenchSource


@hookimpl
def flatplug_register_sources(register):
    register("robustbench", RobustBenchSource)


@hookimpl
def flatplug_register_datasets(register):
    for name, loader in DATASETS.items():
        register(name, loader)
