"""ART trainers (``art.defences.trainer.Trainer`` subclasses) running flatplug's training methods."""

from __future__ import annotations

from .adversarial import FLATNESS, FlatAdversarialTrainer
from .awp import AWPTrainer
from .base import FlatTrainer
from .fam import FAMTrainer
from .lfr import LFRTrainer
from .sam import SAMTrainer

__all__ = ["AWPTrainer", "FAMTrainer", "FLATNESS", "FlatAdversarialTrainer", "FlatTrainer", "LFRTrainer",
           "SAMTrainer"]
