"""The ART ``Trainer`` every flatplug trainer shares: ART data in, the core's training loop underneath.

A trainer reuses its classifier's network, loss, optimizer, preprocessing and clip values: it trains
``PreprocessedModel(classifier)`` (the classifier's own network behind its preprocessing) with
the core's ``flatplug.training.train`` and the classifier's optimizer, so the classifier is
trained in place. The objective is the method's, built on the classifier's own loss
(``CrossEntropyLoss(reduction="sum")`` is trained as a sum; a loss flatplug cannot map exactly is
refused). ``fit`` / ``fit_generator`` take ART's ``AdversarialTrainerAWPPyTorch`` arguments in
its order and return None like ART's trainers; the run's :class:`flatplug.training.History` is
kept in ``trainer.history``. Without ``seed=`` the batches are shuffled with numpy's global
generator and random starts draw from torch's, as in ART, so ``np.random.seed`` /
``torch.manual_seed`` repeat a run.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
from art.defences.trainer.trainer import Trainer

from flatplug.attacks import correct_under
from flatplug.sources import to_loader
from flatplug.training import History, TrainingMethod, train

from .._classifier import adopt, check_classifier, check_optimizer, epoch_count
from .._labels import index_labels
from .._loaders import ArrayBatches, GeneratorBatches
from .._space import InputSpace
from ..preprocessed import PreprocessedModel

FIT_OPTIONS = {"verbose": True, "seed": None, "amp": False, "shuffle": True, "drop_last": False}
GENERATOR_OPTIONS = ("verbose", "seed", "amp")


def fit_options(kwargs: dict[str, Any], allowed, who: str) -> dict[str, Any]:
    """flatplug's options from ``kwargs``; the others are ignored as ART's trainers ignore them, with a warning."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        warnings.warn(f"{who}: ignored keyword arguments {unknown} (ART's trainers accept and ignore extra keywords); "
                      f"flatplug's options here: {', '.join(sorted(allowed))}", UserWarning, stacklevel=3)
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
        self._method = adopt(method, self._classifier, type(self).__name__)

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
            batch_size: int = 128, nb_epochs: int = 20, scheduler: Any = None, **kwargs: Any) -> None:
        """Train on ``(x, y)`` (numpy, the classifier's units; one-hot or index labels) for ``nb_epochs``.

        ART's ``AdversarialTrainerAWPPyTorch.fit`` arguments, in its order. ``scheduler``: any torch
        LR scheduler on the classifier's optimizer (torch 2 ``LRScheduler`` subclasses included), or
        a factory ``scheduler(optimizer)``; stepped once per epoch. ``validation_data=(x_val, y_val)``
        adds ``val_accuracy`` (and, for adversarial trainers, ``val_robust_accuracy`` under the
        trainer's attack) to every epoch of ``self.history``. flatplug's keyword options:
        ``verbose`` (progress bars, default True), ``seed`` (a private shuffling generator and a
        reseeded torch), ``shuffle`` (default True), ``drop_last``, ``amp`` (bfloat16 autocast, CUDA
        only); other keywords are ignored, as ART's trainers ignore them (with a warning).
        """
        who = f"{type(self).__name__}.fit"
        opts = fit_options(kwargs, FIT_OPTIONS, who)
        u = self._space.to_unit(x, strict=self.method.needs_unit_inputs)
        idx = index_labels(y, u.shape[0], self._classifier.nb_classes)
        loader = ArrayBatches(u, idx, batch_size, shuffle=opts["shuffle"], drop_last=opts["drop_last"],
                              seed=opts["seed"])
        self._run(loader, nb_epochs, scheduler, validation_data, opts)

    def fit_generator(self, generator, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
                      nb_epochs: int = 20, scheduler: Any = None, **kwargs: Any) -> None:
        """Train on an ART ``DataGenerator``: ``ceil(size / batch_size)`` of its batches per epoch (ART's convention).

        ART's ``AdversarialTrainerAWPPyTorch.fit_generator`` arguments, in its order; options as for ``fit``
        (``verbose``, ``seed``, ``amp``).
        """
        who = f"{type(self).__name__}.fit_generator"
        opts = fit_options(kwargs, GENERATOR_OPTIONS, who)
        loader = GeneratorBatches(generator, self._classifier.nb_classes, self._space,
                                  strict=self.method.needs_unit_inputs)
        self._run(loader, nb_epochs, scheduler, validation_data, opts)

    def _run(self, loader, nb_epochs, scheduler, validation_data, opts) -> None:
        optimizer = check_optimizer(self._classifier, type(self).__name__)
        nb_epochs = epoch_count(nb_epochs, f"{type(self).__name__}.fit")
        if nb_epochs == 0:  # ART's trainers: no pass over the data, nothing changed
            self.history = History(self.method.name, self.method.settings())
            return
        on_epoch = None if validation_data is None else self._validation(validation_data)
        self.history = train(self._module, loader, method=self.method, epochs=nb_epochs, optimizer=optimizer,
                             scheduler=scheduler, amp=opts["amp"], quiet=not opts["verbose"], seed=opts["seed"],
                             on_epoch=on_epoch)

    def _validation(self, validation_data) -> Callable[[dict], None]:
        """Clean and robust validation accuracy per epoch, by the core's one accuracy loop (``correct_under``).

        Without clip values there is no [0, 1] view of the data: clean accuracy then comes from the
        classifier's own ``predict`` (and no attack runs: such trainers do not perturb inputs).
        """
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data: expected a pair (x_val, y_val) of numpy arrays")
        x_val = validation_data[0]
        u = self._space.to_unit(x_val, name="validation_data x", strict=self.method.needs_unit_inputs)
        idx = index_labels(validation_data[1], u.shape[0], self._classifier.nb_classes, name="validation_data y")
        batches = to_loader(torch.from_numpy(u), torch.from_numpy(idx), 256)

        def on_epoch(record: dict) -> None:
            if self._space.bounded:
                record["val_accuracy"] = float(correct_under(self._module, batches).float().mean())
            else:
                record["val_accuracy"] = float((self._classifier.predict(x_val).argmax(1) == idx).mean())
            if self._robust_attack is not None:
                robust = correct_under(self._module, batches, self._robust_attack)
                record["val_robust_accuracy"] = float(robust.float().mean())

        return on_epoch

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """The classifier's predictions (``classifier.predict``)."""
        return self._classifier.predict(x, **kwargs)
