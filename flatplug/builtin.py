"""The core's own plugin: built-in measures, trainers, sources, datasets and the local executor.

Registered through the same hooks (and the same loader) as third-party plugins.
"""

from __future__ import annotations

from pathlib import Path

from . import measures
from .hookspecs import hookimpl


@hookimpl
def flatplug_register_measures(register):
    for name, fn in measures.MEASURES.items():
        register(name, fn, info=measures.INFOS[name])


@hookimpl
def flatplug_register_trainers(register):
    from .training import METHODS

    for name, cls in METHODS.items():
        register(name, cls, version=cls.version, paper=cls.paper)


def zoo_source(manifest: str | Path):
    """A model zoo described by a manifest file (see ``../shared/models/zoo.json``)."""
    from .sources.zoo import ZooSource

    return ZooSource(manifest)


def demo_source(cache: str | Path | None = None):
    """The embedded digits zoo (trained once, cached)."""
    from .sources.demo import DemoSource

    return DemoSource(cache)


def _needs_path(name: str, path):
    if path is None:
        raise ValueError(f"dataset {name!r} needs a path: pass --data PATH (or path=...)")
    return path


def digits_dataset(path=None, n=None, seed=0, split="test"):
    """scikit-learn's digits (no path needed)."""
    from .sources.digits import load_digits

    return load_digits(n=n, split=split, seed=seed)


def mnist_dataset(path=None, n=None, seed=0, split="test"):
    """MNIST from a folder of IDX files."""
    from .sources.mnist import load_mnist

    return load_mnist(_needs_path("mnist", path), n=n, seed=seed, split=split)


def imagefolder_dataset(path=None, n=None, seed=0, split=None):
    """An ImageFolder folder or tarball (``../shared/data/cifar10/test.tar.gz``)."""
    from .sources.imagefolder import load_imagefolder

    return load_imagefolder(_needs_path("imagefolder", path), n=n, seed=seed, split=split)


@hookimpl
def flatplug_register_sources(register):
    register("zoo", zoo_source)
    register("demo", demo_source)


@hookimpl
def flatplug_register_datasets(register):
    register("digits", digits_dataset)
    register("mnist", mnist_dataset)
    register("imagefolder", imagefolder_dataset)


@hookimpl
def flatplug_register_executors(register):
    from .scoring import LocalExecutor

    register("local", LocalExecutor)
