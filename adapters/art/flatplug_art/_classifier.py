"""What the adapter accepts as a classifier, and how a method takes over the classifier's loss and defences."""

from __future__ import annotations

import operator
from typing import Any

from flatplug.training import TrainingMethod

from ._loss import per_sample_form
from .preprocessed import numpy_ops_in_gradient_path


def check_classifier(classifier, who: str):
    """The classifier if it is an ART ``PyTorchClassifier``; a ``TypeError`` naming what is supported otherwise."""
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(
            f"{who}: expected an ART PyTorchClassifier (art.estimators.classification.PyTorchClassifier or a "
            f"subclass such as flatplug_art.FlatPyTorchClassifier), got {type(classifier).__name__}; flatplug "
            "works on PyTorch models: wrap yours as PyTorchClassifier(model, loss, input_shape, nb_classes, "
            "optimizer=..., clip_values=(0, 1))"
        )
    return classifier


def epoch_count(nb_epochs: Any, who: str) -> int:
    """ART's ``nb_epochs``: any whole number (numpy integers too) of 0 or more; 0 trains nothing, as
    ART's ``range(nb_epochs)`` does."""
    if isinstance(nb_epochs, bool):
        raise TypeError(f"{who}: nb_epochs: expected a whole number of epochs, got {nb_epochs!r}")
    try:
        count = operator.index(nb_epochs)
    except TypeError:
        raise TypeError(f"{who}: nb_epochs: expected a whole number of epochs, got {nb_epochs!r}") from None
    if count < 0:
        raise ValueError(f"{who}: nb_epochs: expected 0 or more epochs, got {count}")
    return count


def check_optimizer(classifier, who: str):
    if classifier.optimizer is None:
        raise ValueError(f"{who}: the classifier has no optimizer; build the PyTorchClassifier with optimizer=...")
    return classifier.optimizer


def adopt(method: TrainingMethod, classifier, who: str) -> TrainingMethod:
    """``method`` set to train the classifier's own loss (and checked against its numpy defences).

    The loss is mapped exactly (:mod:`flatplug_art._loss`) or refused; a method that perturbs
    inputs is refused when a numpy preprocessing defence would sit on its input-gradient path.
    """
    try:
        loss_fn, reduction = per_sample_form(classifier.loss)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{who}: {exc}") from None
    method.set_loss(loss_fn, reduction)
    if method.needs_unit_inputs:
        blocked = numpy_ops_in_gradient_path(classifier)
        if blocked:
            raise TypeError(
                f"{who}: method {method.name!r} differentiates the loss w.r.t. the inputs, but the classifier's "
                f"preprocessing defence(s) {', '.join(blocked)} run in numpy; use their PyTorch versions (e.g. "
                "SpatialSmoothingPyTorch) or a method that does not perturb inputs (sam, asam, fam, standard)"
            )
    return method
