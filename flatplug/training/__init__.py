"""Flatness-aware training and the LFR defence; every method runs in one shared loop (:func:`train`)."""

from __future__ import annotations

from .awp import AWP
from .base import StepResult, TrainingMethod
from .fam import FAM, fam_objective
from .lfr import LFR, lfr_regularizer
from .loop import History, train
from .pgd_at import PGDAT
from .sam import ASAM, SAM
from .standard import Standard

#: built-in trainer name -> class (registered through the core plugin)
METHODS = {cls.name: cls for cls in (Standard, PGDAT, LFR, SAM, ASAM, AWP, FAM)}

__all__ = ["ASAM", "AWP", "FAM", "History", "LFR", "METHODS", "PGDAT", "SAM", "Standard", "StepResult",
           "TrainingMethod", "fam_objective", "lfr_regularizer", "train"]
