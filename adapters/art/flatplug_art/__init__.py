"""flatplug for the Adversarial Robustness Toolbox: flatness-aware ART trainers, an estimator and metrics.

* trainers (``art.defences.trainer.Trainer``): :class:`LFRTrainer`, :class:`SAMTrainer`,
  :class:`AWPTrainer`, :class:`FAMTrainer`, :class:`FlatAdversarialTrainer`;
* an estimator: :class:`FlatPyTorchClassifier`, a ``PyTorchClassifier`` whose ``fit`` is a flatplug method;
* metrics: :mod:`flatplug_art.metrics` (``relative_flatness``, ``hessian_eigenvalues``,
  ``hessian_trace``, ``sharpness``, ``local_flatness``);
* :class:`PreprocessedModel`: an ART classifier as a flatplug model ([0, 1] in, logits out).

Names load lazily, so the plugin entry point does not import ART.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LFRTrainer": "trainers", "SAMTrainer": "trainers", "AWPTrainer": "trainers", "FAMTrainer": "trainers",
    "FlatAdversarialTrainer": "trainers", "FlatTrainer": "trainers",
    "FlatPyTorchClassifier": "estimator",
    "PreprocessedModel": "preprocessed",
    "relative_flatness": "metrics", "hessian_eigenvalues": "metrics", "hessian_trace": "metrics",
    "sharpness": "metrics", "local_flatness": "metrics",
    "PGDATSAM": "methods", "PGDATASAM": "methods", "PGDATFAM": "methods",
}

__all__ = sorted(_EXPORTS) + ["metrics"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name == "metrics":
        return importlib.import_module(".metrics", __name__)
    raise AttributeError(f"module 'flatplug_art' has no attribute {name!r}")
