"""``FlatPyTorchClassifier``: an ART ``PyTorchClassifier`` whose ``fit`` trains with a flatplug method.

Everything else is ART's own ``PyTorchClassifier`` (predictions, loss gradients for attacks,
preprocessing, clip values, save, pickling, ``clone_for_refitting``), so the estimator goes
wherever ART takes one: attacks, metrics, ``AdversarialTrainer`` and ``AdversarialTrainerMadryPGD``
(which call ``fit`` once per batch with the batch's adversarial examples, so ``method="sam"``
there gives SAM on ART's adversarial batches).

``fit`` and ``fit_generator`` keep ART's contract: the same arguments (extra keywords are ignored,
as ART ignores them; ``seed=`` is flatplug's one extra), ``None`` returned, the network left in
the mode ART leaves it (``training_mode``), batches shuffled by a torch ``DataLoader`` drawing from
torch's global generator (``torch.manual_seed`` repeats a run, as with ART). The method trains the
classifier's own loss (``CrossEntropyLoss(reduction="sum")`` is a sum); the run's
:class:`flatplug.training.History` is kept in ``history``.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from art.estimators.classification import PyTorchClassifier

from flatplug.training import History, TrainingMethod, train

from ._build import build_method
from ._classifier import check_optimizer, epoch_count
from ._labels import index_labels
from ._loaders import GeneratorBatches, LoaderBatches
from ._space import InputSpace
from .preprocessed import PreprocessedModel

#: keyword arguments that belong to ``PyTorchClassifier``; every other keyword is a method parameter
ART_KEYWORDS = frozenset(inspect.signature(PyTorchClassifier.__init__).parameters) - {"self"}
#: ``PyTorchClassifier``'s arguments after ``optimizer``, in order (they may be passed positionally, as to ART)
ART_POSITIONAL = tuple(list(inspect.signature(PyTorchClassifier.__init__).parameters)[6:])


class FlatPyTorchClassifier(PyTorchClassifier):
    """``PyTorchClassifier(model, loss, input_shape, nb_classes, optimizer, **art_kwargs)`` trained by ``method``.

    ``method``: any registered flatplug training method (``"sam"``, ``"asam"``, ``"fam"``,
    ``"pgd-at"``, ``"lfr"``, ``"awp"``, ``"art.pgd-at+sam"``, ...); the remaining keywords are its
    parameters (``rho=0.05``; ``eps``/``step_size`` in the classifier's input units; ``layer`` by
    its name in ``model``; ``attack`` an ART ``EvasionAttack`` or a callable on [0, 1] tensors);
    parameters not given take the core method's defaults. Methods that perturb inputs need
    ``clip_values``. ``history`` holds the last ``fit``'s :class:`flatplug.training.History`.
    """

    def __init__(self, model, loss, input_shape, nb_classes: int, optimizer=None, *args: Any, method: str = "sam",
                 **kwargs: Any) -> None:
        if len(args) > len(ART_POSITIONAL):
            raise TypeError(f"FlatPyTorchClassifier: PyTorchClassifier takes {5 + len(ART_POSITIONAL)} positional "
                            f"arguments after self, got {5 + len(args)}")
        for name, value in zip(ART_POSITIONAL, args):
            if name in kwargs:
                raise TypeError(f"FlatPyTorchClassifier: got multiple values for argument {name!r}")
            kwargs[name] = value
        art_kwargs = {k: v for k, v in kwargs.items() if k in ART_KEYWORDS}
        method_params = {k: v for k, v in kwargs.items() if k not in ART_KEYWORDS}
        super().__init__(model, loss, input_shape, nb_classes, optimizer=optimizer, **art_kwargs)
        self.history: History | None = None
        self.set_method(method, **method_params)

    def set_method(self, method: str, **params: Any) -> None:
        """Choose the flatplug method (and its parameters) that ``fit`` trains with."""
        if not isinstance(method, str):
            raise TypeError(f"method: expected the name of a flatplug training method, got {type(method).__name__}")
        self._flat_method: TrainingMethod = build_method(method, dict(params), self, InputSpace.of(self),
                                                         type(self).__name__)
        self._flat_name, self._flat_params = method, dict(params)

    def set_params(self, **kwargs: Any) -> None:
        """ART's ``set_params``; the flatplug method is rebuilt, since its units follow ``clip_values`` and its loss ``loss``."""
        super().set_params(**kwargs)
        if "_flat_name" in self.__dict__:
            self.set_method(self._flat_name, **self._flat_params)

    @property
    def flat_method(self) -> TrainingMethod:
        """The core training method ``fit`` runs."""
        return self._flat_method

    def _train(self, loader, nb_epochs: int, scheduler, verbose: bool, seed, training_mode: bool) -> None:
        optimizer = check_optimizer(self, f"{type(self).__name__}.fit")
        nb_epochs = epoch_count(nb_epochs, f"{type(self).__name__}.fit")
        if nb_epochs == 0:  # ART's fit: no pass over the data, the network left in training_mode
            self._model.train(mode=training_mode)
            return
        module = PreprocessedModel(self, network_training=training_mode)  # fit-time defences either way, as ART
        self.history = train(module, loader, method=self._flat_method, epochs=nb_epochs, optimizer=optimizer,
                             scheduler=scheduler, quiet=not verbose, seed=seed, training_mode=True)
        self._model.train(mode=training_mode)  # where ART's fit leaves it

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 128, nb_epochs: int = 10, training_mode: bool = True,
            drop_last: bool = False, scheduler: Any = None, verbose: bool = False, **kwargs: Any) -> None:
        """Train with the flatplug method; ``PyTorchClassifier.fit``'s arguments and return value (None).

        ``training_mode=False`` trains with the network in eval mode, as ART does. ``seed=`` (flatplug's
        extra) reseeds torch's global generator first; other keywords are ignored, as ART ignores them
        (``AdversarialTrainerMadryPGD`` passes ``validation_data`` here, for instance).
        """
        space = InputSpace.of(self)
        u = space.to_unit(x, strict=self._flat_method.needs_unit_inputs)
        idx = index_labels(y, u.shape[0], self.nb_classes)
        loader = LoaderBatches(u, idx, batch_size, drop_last=drop_last)
        self._train(loader, nb_epochs, scheduler, verbose, kwargs.get("seed"), training_mode)

    def fit_generator(self, generator, nb_epochs: int = 20, verbose: bool = False, **kwargs: Any) -> None:
        """Train on an ART ``DataGenerator`` with the flatplug method, on the batches ART's ``fit_generator`` uses.

        A ``PyTorchDataGenerator`` with standardisation-only preprocessing is iterated once per epoch
        (ART's fast path); any other generator gives ``int(size / batch_size)`` batches per epoch.
        Extra keywords: ``seed`` and ``scheduler`` (flatplug's); others are ignored, as ART ignores them.
        """
        loader = GeneratorBatches(generator, self.nb_classes, InputSpace.of(self), batches=self._generator_batches(generator),
                                  strict=self._flat_method.needs_unit_inputs)
        self._train(loader, nb_epochs, kwargs.get("scheduler"), verbose, kwargs.get("seed"), True)

    def _generator_batches(self, generator) -> int | str:
        from art.data_generators import DataGenerator, PyTorchDataGenerator
        from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch

        if not isinstance(generator, DataGenerator):
            return 0  # GeneratorBatches raises the clear error
        pre = self.preprocessing
        trivial = pre is None or (isinstance(pre, StandardisationMeanStdPyTorch)
                                  and np.all(np.asarray(pre.mean) == 0) and np.all(np.asarray(pre.std) == 1))
        if isinstance(generator, PyTorchDataGenerator) and trivial:
            return "iterator"
        return int(generator.size / generator.batch_size) if generator.size is not None else 0

    def clone_for_refitting(self) -> "FlatPyTorchClassifier":
        """ART's clone (fresh weights, same optimizer type), keeping the flatplug method and its parameters."""
        clone = super().clone_for_refitting()
        clone.set_method(self._flat_name, **self._flat_params)
        return clone

    def __repr__(self) -> str:
        """ART's repr (``module.Class(model=..., loss=..., ...)``) with the flatplug method and its parameters last."""
        params = "".join(f", {k}={v!r}" for k, v in self._flat_params.items())
        return f"{super().__repr__()[:-1]}, method={self._flat_name!r}{params})"
