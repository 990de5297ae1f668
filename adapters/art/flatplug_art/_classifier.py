"""What the adapter accepts as a classifier, and the one note about its loss."""

from __future__ import annotations

import warnings


def check_classifier(classifier, who: str):
    """The classifier if it is an ART ``PyTorchClassifier``; a ``TypeError`` naming what is supported otherwise."""
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(
            f"{who}: expected an ART PyTorchClassifier (art.estimators.classification.PyTorchClassifier or a "
            f"subclass such as flatplug_art.FlatPyTorchClassifier), got {type(classifier).__name__}; flatplug "
            "trains PyTorch models: wrap yours as PyTorchClassifier(model, loss, input_shape, nb_classes, "
            "optimizer=..., clip_values=(0, 1))"
        )
    return classifier


def check_optimizer(classifier, who: str):
    if classifier.optimizer is None:
        raise ValueError(f"{who}: the classifier has no optimizer; build the PyTorchClassifier with optimizer=...")
    return classifier.optimizer


def warn_if_not_cross_entropy(classifier, who: str) -> None:
    """flatplug's methods minimise softmax cross-entropy; say so when the classifier's loss differs."""
    import torch

    loss = classifier.loss
    plain = (
        isinstance(loss, torch.nn.CrossEntropyLoss)
        and loss.weight is None
        and float(getattr(loss, "label_smoothing", 0.0)) == 0.0
    )
    if not plain:
        warnings.warn(
            f"{who}: flatplug's training methods minimise softmax cross-entropy on the model's outputs (logits); "
            f"the classifier's loss {loss!r} is not used for training (ART attacks on the classifier still use it)",
            UserWarning,
            stacklevel=3,
        )
