"""The module flatplug trains: [0, 1] images -> the classifier's range -> its preprocessing -> its model.

ART keeps normalisation outside the network (``PyTorchClassifier(preprocessing=(mean, std))``);
flatplug's convention is a model that takes [0, 1] images and owns its normalisation. This
wrapper bridges the two in torch, so attacks, LFR's inner maximisation and every flatness
measure see [0, 1] inputs while the network sees exactly what ART would feed it. It holds the
classifier's own network as its child ``model``: training the wrapper trains the classifier.

Preprocessing operations follow ART's flags: those with ``apply_fit`` run while the wrapper is in
train mode (fitting), those with ``apply_predict`` in eval mode (the mode attacks and measures run
in). ``fit(training_mode=False)`` keeps the wrapper in train mode, so the fit-time defences run as
in ART's ``fit``, and holds only the classifier's network in eval mode
(``PreprocessedModel(network_training=False)``). The defences run on every forward pass of
training (each batch; twice in a SAM step), where ART's ``fit`` runs its fit-time set once over the
whole array: deterministic defences give the same inputs either way, random ones (e.g.
``GaussianAugmentation(augmentation=False)``) draw fresh noise per pass instead of once per ``fit``. Standardisation runs as
plain torch ops (any dtype); other ``PreprocessorPyTorch`` defences run their ``forward`` and are
differentiated through it, as ART's ``loss_gradient`` does. Numpy-only defences
(``FeatureSqueezing``, ``SpatialSmoothing``, ...) run in numpy where ART runs them and no input
gradient is needed (training the weights, predictions); where an input gradient would have to
pass through one (an attack, LFR), the forward pass raises a clear error instead (see
:func:`numpy_ops_in_gradient_path`, which trainers check up front). Defences that rewrite labels
or change the number of samples (mixup, cutmix, Gaussian augmentation) are not supported, since
the module sees inputs only.
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


class _NumpyOp(nn.Module):
    """An ART numpy ``Preprocessor`` applied to the inputs outside autograd (no input gradient through it)."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.apply_fit, self.apply_predict = op.apply_fit, op.apply_predict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self.op).__name__
        if x.requires_grad:
            raise TypeError(
                f"preprocessing: {name} runs in numpy, so no input gradient can pass through it (an attack or LFR "
                f"needs one); use its PyTorch version (e.g. SpatialSmoothingPyTorch), set its apply_fit / "
                "apply_predict off for this use, or train with a method that does not perturb inputs"
            )
        out, _ = self.op(x.detach().cpu().numpy(), None)
        if out.shape != tuple(x.shape):
            raise TypeError(f"preprocessing: {name} changes the batch's shape {tuple(x.shape)} -> {out.shape} "
                            "(it augments or rewrites samples); flatplug trains on the inputs as given")
        return torch.from_numpy(np.asarray(out)).to(device=x.device, dtype=x.dtype)


def numpy_ops_in_gradient_path(classifier, *, train: bool = True, predict: bool = True) -> list[str]:
    """Names of the classifier's numpy defences active in train (``apply_fit``) / eval (``apply_predict``) mode."""
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch

    standard = _standardisation_types()
    return [type(op).__name__ for op in classifier.preprocessing_operations
            if not isinstance(op, standard) and not isinstance(op, PreprocessorPyTorch)
            and ((train and op.apply_fit) or (predict and op.apply_predict))]


#: ART defences that rewrite the labels (or mix samples): flatplug's methods train on the labels given
LABEL_DEFENCES = ("LabelSmoothing", "Mixup", "MixupPyTorch", "MixupTensorFlowV2", "CutMix", "CutMixPyTorch",
                  "CutMixTensorFlowV2")


def preprocessing_modules(classifier) -> list[nn.Module]:
    """The classifier's preprocessing operations as torch modules, in ART's order (label-rewriting
    defences refused up front, rather than failing inside ART on the first batch)."""
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch

    standard = _standardisation_types()
    mods: list[nn.Module] = []
    for op in classifier.preprocessing_operations:
        name = type(op).__name__
        if name in LABEL_DEFENCES and (op.apply_fit or op.apply_predict):
            raise TypeError(
                f"preprocessing: {name} rewrites the labels (or mixes samples), and flatplug's methods train on "
                "the inputs and labels as given; build the classifier without it for flatplug's training, "
                "set its apply_fit off, or train with ART's own fit"
            )
        if isinstance(op, standard):
            if np.all(op.mean == 0) and np.all(op.std == 1):
                continue
            mods.append(_Standardise(op.mean, op.std, op.apply_fit, op.apply_predict))
        elif isinstance(op, PreprocessorPyTorch):
            mods.append(_TorchOp(op))
        else:
            mods.append(_NumpyOp(op))
    return mods


class PreprocessedModel(nn.Module):
    """``model(preprocess(lo + u * (hi - lo)))`` for [0, 1] inputs ``u``: the classifier as a flatplug model."""

    def __init__(self, classifier, space: InputSpace | None = None, *, network_training: bool = True):
        super().__init__()
        self.space = space or InputSpace.of(classifier)
        self.model = classifier.model
        self.preprocessing = nn.ModuleList(preprocessing_modules(classifier))
        self.network_training = bool(network_training)

    def train(self, mode: bool = True) -> "PreprocessedModel":
        """Train mode selects the fit-time defences; the network itself trains only if ``network_training``
        (ART's ``fit(training_mode=False)``: fit-time preprocessing, the network in eval mode)."""
        super().train(mode)
        if mode and not self.network_training:
            self.model.train(False)
        return self

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = self.space.from_unit(u)
        for op in self.preprocessing:
            if (op.apply_fit if self.training else op.apply_predict):
                x = op(x)
        return self.model(x)
