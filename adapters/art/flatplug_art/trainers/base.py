"""The ART ``Trainer`` every flatplug trainer shares: ART data in, the core's training loop underneath.

A trainer reuses its classifier's network, optimizer, preprocessing and clip values: it trains
``PreprocessedModel(classifier)`` (the classifier's own network behind its preprocessing) with
the core's ``flatplug.training.train`` and the classifier's optimizer, so the classifier is
trained in place. The objective is the method's (softmax cross-entropy based, as in the core);
a classifier whose loss is not plain cross-entropy gets a warning saying so.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from art.defences.trainer.trainer import Trainer

from flatplug.ext import model_device_dtype, preserved
from flatplug.sources import to_loader
from flatplug.training import History, TrainingMethod, train

from .._classifier import check_classifier, check_optimizer, warn_if_not_cross_entropy
from .._labels import index_labels
from .._loaders import ArrayBatches, GeneratorBatches
from .._space import InputSpace
from ..preprocessed import PreprocessedModel

FIT_OPTIONS = {"verbose": True, "seed": None, "amp": False, "shuffle": True, "drop_last": False}
GENERATOR_OPTIONS = ("verbose", "seed", "amp")


def fit_options(kwargs: dict[str, Any], allowed, who: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{who}: unexpected keyword arguments {unknown}; supported: {', '.join(sorted(allowed))}")
    return {k: kwargs.get(k, FIT_OPTIONS[k]) for k in allowed}


class FlatTrainer(Trainer):
    """Base class: subclasses pick a core ``TrainingMethod`` in ``__init__`` and call ``self._use(method)``."""

    def __init__(self, classifier) -> None:
        check_classifier(classifier, type(self).__name__)
        super().__init__(classifier)
        self._space = InputSpace.of(classifier)
        self._module = PreprocessedModel(classifier, self._space)
        self._method: TrainingMethod | None = None
        #: attack(x, y) on [0, 1] tensors used to report robust accuracy on validation data (adversarial trainers)
        self._robust_attack: Callable | None = None
        #: the :class:`flatplug.training.History` of the last ``fit``/``fit_generator`` (loss, accuracy, seconds, lr)
        self.history: History | None = None

    # -- set-up ---------------------------------------------------------
    def _use(self, method: TrainingMethod) -> None:
        if method.needs_unit_inputs:
            self._space.require(type(self).__name__)
        self._method = method

    @property
    def method(self) -> TrainingMethod:
        """The core training method this trainer runs (its settings are recorded in ``history``)."""
        assert self._method is not None
        return self._method

    @property
    def module(self) -> torch.nn.Module:
        """The torch module trained: [0, 1] inputs -> classifier's range -> preprocessing -> classifier's network."""
        return self._module

    # -- training -------------------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            batch_size: int = 128, nb_epochs: int = 20, scheduler: Any = None, **kwargs: Any) -> History:
        """Train on ``(x, y)`` (numpy, the classifier's units; one-hot or index labels) for ``nb_epochs``.

        ``scheduler``: any torch LR scheduler on the classifier's optimizer (torch 2 ``LRScheduler``
        subclasses included), or a factory ``scheduler(optimizer)``; stepped once per epoch.
        ``validation_data=(x_val, y_val)`` adds ``val_accuracy`` (and, for adversarial trainers,
        ``val_robust_accuracy``) to every epoch of the returned history. Keyword options:
        ``verbose`` (progress bars, default True), ``seed`` (shuffling and the methods' random
        starts), ``shuffle`` (default True), ``drop_last``, ``amp`` (bfloat16 autocast, CUDA only).
        """
        who = f"{type(self).__name__}.fit"
        opts = fit_options(kwargs, FIT_OPTIONS, who)
        u = self._space.to_unit(x)
        idx = index_labels(y, u.shape[0], self._classifier.nb_classes)
        loader = ArrayBatches(u, idx, batch_size, shuffle=opts["shuffle"], drop_last=opts["drop_last"],
                              seed=opts["seed"])
        return self._run(loader, nb_epochs, scheduler, validation_data, opts)

    def fit_generator(self, generator, nb_epochs: int = 20, validation_data=None, scheduler: Any = None,
                      **kwargs: Any) -> History:
        """Train on an ART ``DataGenerator``: ``ceil(size / batch_size)`` of its batches per epoch (ART's convention)."""
        who = f"{type(self).__name__}.fit_generator"
        opts = fit_options(kwargs, GENERATOR_OPTIONS, who)
        loader = GeneratorBatches(generator, self._classifier.nb_classes, self._space)
        return self._run(loader, nb_epochs, scheduler, validation_data, opts)

    def _run(self, loader, nb_epochs, scheduler, validation_data, opts) -> History:
        who = type(self).__name__
        optimizer = check_optimizer(self._classifier, who)
        warn_if_not_cross_entropy(self._classifier, who)
        on_epoch = None if validation_data is None else self._validation(validation_data)
        self.history = train(self._module, loader, method=self.method, epochs=nb_epochs, optimizer=optimizer,
                             scheduler=scheduler, amp=opts["amp"], quiet=not opts["verbose"], seed=opts["seed"],
                             on_epoch=on_epoch)
        return self.history

    def _validation(self, validation_data) -> Callable[[dict], None]:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data: expected a pair (x_val, y_val) of numpy arrays")
        u = self._space.to_unit(validation_data[0], name="validation_data x")
        idx = index_labels(validation_data[1], u.shape[0], self._classifier.nb_classes, name="validation_data y")
        batches = to_loader(torch.from_numpy(u), torch.from_numpy(idx), 256)

        def on_epoch(record: dict) -> None:
            device, dtype = model_device_dtype(self._module)
            clean = robust = total = 0
            with preserved(self._module):
                for xb, yb in batches:
                    xb, yb = xb.to(device, dtype), yb.to(device)
                    with torch.no_grad():
                        clean += int((self._module(xb).argmax(1) == yb).sum())
                    if self._robust_attack is not None:
                        adv = self._robust_attack(xb, yb).detach()
                        with torch.no_grad():
                            robust += int((self._module(adv).argmax(1) == yb).sum())
                    total += yb.shape[0]
            record["val_accuracy"] = clean / total
            if self._robust_attack is not None:
                record["val_robust_accuracy"] = robust / total

        return on_epoch

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """The classifier's predictions (``classifier.predict``)."""
        return self._classifier.predict(x, **kwargs)
