"""The ``flatplug`` entry point of flatplug-art: registers the ART trainers, estimator, methods and metrics.

Importing this module does not import ART (a few seconds): the ART trainer classes are registered
as small factories that import ``flatplug_art`` on first use, so ``flatplug plugins`` and every
other flatplug call stay fast. The combined methods (``art.pgd-at+sam``, ...) are plain torch
``TrainingMethod``s, usable with ``fp.train``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from flatplug import hookimpl

#: registered trainer name -> public class of flatplug_art
TRAINERS = {
    "art.lfr": "LFRTrainer",
    "art.sam": "SAMTrainer",
    "art.awp": "AWPTrainer",
    "art.fam": "FAMTrainer",
    "art.flat-adversarial": "FlatAdversarialTrainer",
    "art.flat-classifier": "FlatPyTorchClassifier",
}


def lazy_class(name: str, attr: str) -> Callable[..., Any]:
    """A factory building ``flatplug_art.<attr>``; ART is imported on the first call."""

    def build(*args: Any, **kwargs: Any) -> Any:
        if not args and not {"classifier", "model"} & set(kwargs):
            first = "model, loss, input_shape, nb_classes" if attr == "FlatPyTorchClassifier" else "classifier"
            raise TypeError(
                f"{name!r} builds the ART {attr} as {attr}({first}, ...), from an ART PyTorchClassifier; it is "
                "not a method for fp.train on a plain torch model (use method='lfr', 'sam', 'awp', 'fam' or "
                "'pgd-at' there)"
            )
        return getattr(importlib.import_module("flatplug_art"), attr)(*args, **kwargs)

    build.__name__ = build.__qualname__ = attr
    build.__doc__ = f"Build ``flatplug_art.{attr}`` (registered as {name!r})."
    return build


@hookimpl
def flatplug_register_trainers(register):
    from .methods import METHODS

    for name, cls in METHODS.items():
        register(name, cls)
    for name, attr in TRAINERS.items():
        register(name, lazy_class(name, attr))


@hookimpl
def flatplug_register_measures(register):
    from .metrics import MEASURES, not_in_scoring

    for name, fn in MEASURES.items():
        register(name, fn, check=not_in_scoring(name.split(".", 1)[1]))
