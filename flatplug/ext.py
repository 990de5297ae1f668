"""The public toolkit for extension authors: what the built-in measures, attacks and adapters use.

A third-party measure, attack, trainer, source or executor imports from here (and from the
top-level ``flatplug``), never from the private ``flatplug._*`` modules, whose names may change
in any release. Everything here keeps its name and behaviour within a major version.

Input checks (each raises with a message that says what was wrong and what to do):

* :func:`check_inputs` (floating, finite, batched; ``unit_range=True`` for images in [0, 1]),
  :func:`check_labels`, :func:`check_logits`, :func:`check_positive`, :func:`check_choice`.

Working on a model:

* :func:`preserved`: run in eval mode and leave the model exactly as found (modes,
  ``requires_grad``, grads, hooks; ``weights=True`` also restores parameters and buffers);
* :func:`model_device_dtype`, :func:`select_params` (``params=`` by name, module or tensor);
* :class:`Batches`: a validated, re-iterable view of ``(x, y)`` or any iterable of batches;
* :data:`LossFn`, :func:`cross_entropy`, :func:`resolve_loss`, :func:`per_sample_loss`: the
  per-sample loss convention of every measure.

Registering:

* :class:`MeasureInfo`: what a measure declares when it registers (version, zoo defaults, the
  attack settings it follows, whether it reuses scoring's shared forward pass, the ``check`` of its
  settings that scoring runs before any work);
* :class:`AttackInfo`: an attack's implementation version;
* :class:`ForwardPass`: what scoring's shared forward pass hands to ``MeasureInfo.from_forward``
  (``forward.penultimate(name)``: the features, labels and logits layer, or a clear error).

Also :func:`progress` (a tqdm bar that stays quiet off a terminal) and the error types of
:mod:`flatplug.errors`.
"""

from __future__ import annotations

from ._data import Batches, model_device_dtype
from ._loss import LossFn, cross_entropy, per_sample_loss, resolve_loss
from ._params import ParamSpec, select_params
from ._progress import progress
from ._state import preserved
from ._validation import check_choice, check_inputs, check_labels, check_logits, check_positive
from .errors import (CheckpointDownloadError, CheckpointError, CheckpointNotFoundError, DuplicatePluginError,
                     ManifestError, PluginWarning, StoreError, UnknownModelError, UnknownPluginError)
from .registry import AttackInfo, ForwardPass, MeasureInfo

__all__ = [
    "AttackInfo", "Batches", "CheckpointDownloadError", "CheckpointError", "CheckpointNotFoundError",
    "DuplicatePluginError", "ForwardPass", "LossFn", "ManifestError", "MeasureInfo", "ParamSpec", "PluginWarning",
    "StoreError", "UnknownModelError", "UnknownPluginError", "check_choice", "check_inputs", "check_labels",
    "check_logits", "check_positive", "cross_entropy", "model_device_dtype", "per_sample_loss", "preserved",
    "progress", "resolve_loss", "select_params",
]
