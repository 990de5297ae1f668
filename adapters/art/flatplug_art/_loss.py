"""The classifier's torch loss as the loss flatplug's methods train: per-sample values plus a reduction.

ART trains ``classifier.loss(model(x), y)``. flatplug's methods train ``reduce(loss_fn(logits, y))``
(:meth:`flatplug.training.TrainingMethod.set_loss`), which also reduces their regularisers and
drives their inner maximisers. This module maps the torch losses ART classifiers use onto that
form exactly, or refuses with an error that says what is supported; it never falls back to
another loss.

* ``CrossEntropyLoss`` (``weight``, ``ignore_index``, ``label_smoothing``), ``NLLLoss``
  (``weight``, ``ignore_index``) and ``MultiMarginLoss`` (``p``, ``margin``, ``weight``), with
  ``reduction="sum"`` or ``"mean"``.
* torch's ``"mean"`` of a class-weighted (or ``ignore_index``) loss divides by the summed weights
  of the batch's labels, not by the batch size: each per-sample value is then scaled by
  ``N / sum_i w[y_i]``, so that their mean is torch's loss exactly.

Every mapping is checked against the loss module itself on a probe batch when it is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flatplug.ext import LossFn

#: torch loss classes mapped exactly (a subclass that overrides ``forward`` is not one of them)
SUPPORTED = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)


def _supported_class(loss) -> type | None:
    for cls in SUPPORTED:
        if isinstance(loss, cls) and type(loss).forward is cls.forward:
            return cls
    return None


def _weighted_mean_scale(loss, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``N / sum_i w[y_i]`` over the non-ignored samples, or None when torch's mean is the plain mean."""
    weight = getattr(loss, "weight", None)
    ignore = getattr(loss, "ignore_index", None)
    ignored = ignore is not None and bool((y == ignore).any())
    if weight is None and not ignored:
        return None
    w = (torch.ones(y.shape[0], device=y.device, dtype=dtype) if weight is None
         else weight.to(device=y.device, dtype=dtype)[y.clamp_min(0)])
    if ignore is not None:
        w = w * (y != ignore)
    return y.shape[0] / w.sum()


def per_sample_form(loss) -> tuple[LossFn, str]:
    """``(loss_fn, reduction)`` with ``reduction(loss_fn(logits, y)) == loss(logits, y)``, or a TypeError/ValueError."""
    cls = _supported_class(loss)
    if cls is None:
        raise TypeError(
            f"loss: flatplug trains the classifier's own loss and maps {', '.join(c.__name__ for c in SUPPORTED)} "
            f"(reduction 'mean' or 'sum') onto its per-sample form; {type(loss).__name__} is not one of them. "
            "Build the PyTorchClassifier with one of those losses, or train with ART's own fit"
        )
    reduction = loss.reduction
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss: {type(loss).__name__}(reduction={reduction!r}) returns no scalar to train (ART's own fit cannot "
            "train it either); build it with reduction='mean' or 'sum'"
        )

    loss_fn = PerSampleLoss(loss, cls)
    _check(loss, loss_fn, reduction)
    return loss_fn, reduction


class PerSampleLoss:
    """``loss``'s per-sample values (a picklable callable, so classifiers holding it pickle as ART's do)."""

    def __init__(self, loss, cls: type):
        self.loss, self.cls = loss, cls

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, cls = self.loss, self.cls
        weight = None if loss.weight is None else loss.weight.to(device=logits.device, dtype=logits.dtype)
        if cls is nn.CrossEntropyLoss:
            out = F.cross_entropy(logits, y, weight=weight, ignore_index=loss.ignore_index, reduction="none",
                                  label_smoothing=loss.label_smoothing)
        elif cls is nn.NLLLoss:
            out = F.nll_loss(logits, y, weight=weight, ignore_index=loss.ignore_index, reduction="none")
        else:
            out = F.multi_margin_loss(logits, y, p=loss.p, margin=loss.margin, weight=weight, reduction="none")
        if loss.reduction == "mean" and cls is not nn.MultiMarginLoss:
            scale = _weighted_mean_scale(loss, y, out.dtype)
            if scale is not None:
                out = out * scale
        return out

    def __repr__(self) -> str:
        return f"PerSampleLoss({self.loss!r})"


def _check(loss, loss_fn: LossFn, reduction: str) -> None:
    """The mapping reproduces ``loss`` on a probe batch (guards against a torch loss whose semantics moved)."""
    weight = getattr(loss, "weight", None)
    device = weight.device if weight is not None else torch.device("cpu")
    classes = weight.shape[0] if weight is not None else 5
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2 * classes, classes, generator=g, dtype=torch.float64).to(device)
    if isinstance(loss, nn.NLLLoss):
        logits = logits.log_softmax(1)
    y = (torch.arange(2 * classes) % classes).to(device)
    per = loss_fn(logits, y)
    got = per.sum() if reduction == "sum" else per.mean()
    want = _double(loss)(logits, y)
    if not torch.allclose(got, want, rtol=1e-9, atol=1e-12):
        raise TypeError(f"loss: flatplug's per-sample form of {loss!r} gives {float(got)!r} where the loss gives "
                        f"{float(want)!r}; train with ART's own fit")


def _double(loss):
    """A float64 copy of ``loss`` for the probe (weights cast), the original left untouched."""
    import copy

    clone = copy.copy(loss)
    if getattr(loss, "weight", None) is not None:
        clone = copy.deepcopy(loss)
        clone.weight = loss.weight.double()
    return clone
