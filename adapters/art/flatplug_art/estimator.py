"""``FlatPyTorchClassifier``: an ART ``PyTorchClassifier`` whose ``fit`` trains with a flatplug method.

Everything else is ART's own ``PyTorchClassifier`` (predictions, loss gradients for attacks,
preprocessing, clip values), so the estimator goes wherever ART takes one: attacks, metrics,
``AdversarialTrainer`` (which calls ``fit`` once per batch with the batch's adversarial examples,
so ``method="sam"`` there gives SAM on ART's adversarial batches).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from art.estimators.classification import PyTorchClassifier

from flatplug.training import History, TrainingMethod, train

from ._build import build_method
from ._classifier import check_optimizer, warn_if_not_cross_entropy
from ._labels import index_labels
from ._loaders import ArrayBatches, GeneratorBatches
from ._space import InputSpace
from .preprocessed import PreprocessedModel

#: keyword arguments that belong to ``PyTorchClassifier``; every other keyword is a method parameter
ART_KEYWORDS = frozenset(inspect.signature(PyTorchClassifier.__init__).parameters) - {"self"}


class FlatPyTorchClassifier(PyTorchClassifier):
    """``PyTorchClassifier(model, loss, input_shape, nb_classes, optimizer, **art_kwargs)`` trained by ``method``.

    ``method``: any registered flatplug training method (``"sam"``, ``"asam"``, ``"fam"``,
    ``"pgd-at"``, ``"lfr"``, ``"awp"``, ``"art.pgd-at+sam"``, ...); the remaining keywords are its
    parameters (``rho=0.05``; ``eps``/``step_size`` in the classifier's input units; ``layer`` by
    its name in ``model``; ``attack`` an ART ``EvasionAttack`` or a callable on [0, 1] tensors).
    Methods that perturb inputs need ``clip_values``. ``history`` holds the last ``fit``'s
    :class:`flatplug.training.History`.
    """

    def __init__(self, model, loss, input_shape, nb_classes: int, optimizer=None, *, method: str = "sam",
                 **kwargs: Any) -> None:
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

    @property
    def flat_method(self) -> TrainingMethod:
        """The core training method ``fit`` runs."""
        return self._flat_method

    def _train(self, loader, nb_epochs: int, scheduler, verbose: bool, seed) -> History:
        who = f"{type(self).__name__}.fit"
        optimizer = check_optimizer(self, who)
        warn_if_not_cross_entropy(self, who)
        module = PreprocessedModel(self)
        self.history = train(module, loader, method=self._flat_method, epochs=nb_epochs, optimizer=optimizer,
                             scheduler=scheduler, quiet=not verbose, seed=seed)
        return self.history

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 128, nb_epochs: int = 10, training_mode: bool = True,
            drop_last: bool = False, scheduler: Any = None, verbose: bool = False, **kwargs: Any) -> History:
        """Train with the flatplug method (ART's ``fit`` signature; also ``seed=``). Returns the history."""
        unknown = sorted(set(kwargs) - {"seed"})
        if unknown:
            raise TypeError(f"{type(self).__name__}.fit: unexpected keyword arguments {unknown}; supported extra: seed")
        if not training_mode:
            raise ValueError("training_mode: flatplug methods train with the network in train mode; pass training_mode=True")
        space = InputSpace.of(self)
        u = space.to_unit(x)
        idx = index_labels(y, u.shape[0], self.nb_classes)
        loader = ArrayBatches(u, idx, batch_size, shuffle=True, drop_last=drop_last, seed=kwargs.get("seed"))
        return self._train(loader, nb_epochs, scheduler, verbose, kwargs.get("seed"))

    def fit_generator(self, generator, nb_epochs: int = 20, verbose: bool = False, **kwargs: Any) -> History:
        """Train on an ART ``DataGenerator`` with the flatplug method (``ceil(size / batch_size)`` batches an epoch)."""
        unknown = sorted(set(kwargs) - {"seed", "scheduler"})
        if unknown:
            raise TypeError(f"{type(self).__name__}.fit_generator: unexpected keyword arguments {unknown}; "
                            "supported extra: seed, scheduler")
        loader = GeneratorBatches(generator, self.nb_classes, InputSpace.of(self))
        return self._train(loader, nb_epochs, kwargs.get("scheduler"), verbose, kwargs.get("seed"))

    def clone_for_refitting(self) -> "FlatPyTorchClassifier":
        """ART's clone (fresh weights, same optimizer type), keeping the flatplug method and its parameters."""
        clone = super().clone_for_refitting()
        clone.set_method(self._flat_name, **self._flat_params)
        return clone
