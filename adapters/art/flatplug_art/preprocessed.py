"""The module flatplug trains: [0, 1] images -> the classifier's range -> its preprocessing -> its model.

ART keeps normalisation outside the network (``PyTorchClassifier(preprocessing=(mean, std))``);
flatplug's convention is a model that takes [0, 1] images and owns its normalisation. This
wrapper bridges the two in torch, so attacks, LFR's inner maximisation and every flatness
measure see [0, 1] inputs while the network sees exactly what ART would feed it. It holds the
classifier's own network as its child ``model``: training the wrapper trains the classifier.

Preprocessing operations follow ART's flags: those with ``apply_fit`` run in train mode, those
with ``apply_predict`` in eval mode (the mode attacks and measures run in). Standardisation runs as
plain torch ops (any dtype); other ``PreprocessorPyTorch`` defences run their ``forward`` and are
differentiated through it, as ART's ``loss_gradient`` does. Numpy-only preprocessing defences
cannot sit inside a torch graph and are refused; defences that rewrite labels (mixup, cutmix)
are not supported, since the module sees inputs only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._space import InputSpace


def _standardisation_types() -> tuple[type, ...]:
    from art.preprocessing.standardisation_mean_std.numpy import StandardisationMeanStd
    from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch

    return StandardisationMeanStd, StandardisationMeanStdPyTorch


class _Standardise(nn.Module):
    """``(x - mean) / std`` with ART's broadcasting rule (a per-channel vector meets the channel axis)."""

    def __init__(self, mean, std, apply_fit: bool, apply_predict: bool):
        super().__init__()
        self.mean_np = np.asarray(mean, dtype=np.float64)
        self.std_np = np.asarray(std, dtype=np.float64)
        self.apply_fit, self.apply_predict = apply_fit, apply_predict
        self._cache: dict = {}

    def _constants(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mean_np, self.std_np
        axis = None
        if mean.ndim == 1 and mean.shape[0] > 1 and mean.shape[0] != x.shape[-1]:
            axis = 1 if x.shape[1] == mean.shape[0] else 0
        key = (x.dtype, x.device, x.dim(), axis)
        if key not in self._cache:  # built once per dtype/device/layout: no host-to-device copy per step
            if axis is not None:
                shape = [1] * x.dim()
                shape[axis] = mean.shape[0]
                mean, std = mean.reshape(shape), std.reshape(shape)
            self._cache[key] = (torch.as_tensor(mean, dtype=x.dtype, device=x.device),
                                torch.as_tensor(std, dtype=x.dtype, device=x.device))
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self._constants(x)
        return (x - m) / s


class _TorchOp(nn.Module):
    """An ART ``PreprocessorPyTorch`` applied to the inputs (its ``forward``, differentiated as is)."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.apply_fit, self.apply_predict = op.apply_fit, op.apply_predict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward(x, None)[0]


def preprocessing_modules(classifier) -> list[nn.Module]:
    """The classifier's preprocessing operations as torch modules, in ART's order."""
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch

    standard = _standardisation_types()
    mods: list[nn.Module] = []
    for op in classifier.preprocessing_operations:
        if isinstance(op, standard):
            if np.all(op.mean == 0) and np.all(op.std == 1):
                continue
            mods.append(_Standardise(op.mean, op.std, op.apply_fit, op.apply_predict))
        elif isinstance(op, PreprocessorPyTorch):
            mods.append(_TorchOp(op))
        else:
            raise TypeError(
                f"preprocessing: {type(op).__name__} runs in numpy, so it cannot sit inside the torch graph that "
                "flatplug trains and differentiates; use its PyTorch version (e.g. SpatialSmoothingPyTorch) or "
                "leave it out of the classifier"
            )
    return mods


class PreprocessedModel(nn.Module):
    """``model(preprocess(lo + u * (hi - lo)))`` for [0, 1] inputs ``u``: the classifier as a flatplug model."""

    def __init__(self, classifier, space: InputSpace | None = None):
        super().__init__()
        self.space = space or InputSpace.of(classifier)
        self.model = classifier.model
        self.preprocessing = nn.ModuleList(preprocessing_modules(classifier))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = self.space.from_unit(u)
        for op in self.preprocessing:
            if (op.apply_fit if self.training else op.apply_predict):
                x = op(x)
        return self.model(x)
