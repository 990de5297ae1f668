"""FlatPyTorchClassifier: a PyTorchClassifier whose fit is a flatplug method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("art")

from art.attacks.evasion import ProjectedGradientDescent  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from art.metrics import loss_sensitivity  # noqa: E402
from art_support import MEAN, STD, classifier, mnist_split, one_thread, weights  # noqa: E402,F401
from conftest import shared_path  # noqa: E402

import flatplug_art as fa  # noqa: E402
from flatplug.plugins import UnknownPluginError  # noqa: E402
from flatplug_art.attack import ARTAttack  # noqa: E402


@pytest.fixture(scope="module")
def small():
    xtr, ytr, _, _ = mnist_split(str(shared_path("data", "mnist")))
    return xtr[:256], ytr[:256]


def flat(seed=0, **kwargs):
    return classifier(seed, cls=fa.FlatPyTorchClassifier, **kwargs)


def test_is_a_pytorch_classifier_with_art_and_method_keywords_split():
    clf = flat(method="asam", rho=0.3, eta=0.02)
    assert isinstance(clf, PyTorchClassifier)
    assert clf.flat_method.name == "asam" and clf.flat_method.rho == 0.3 and clf.flat_method.eta == 0.02
    np.testing.assert_allclose(clf.clip_values, [0.0, 1.0])
    assert float(clf.preprocessing.mean) == pytest.approx(MEAN) and float(clf.preprocessing.std) == pytest.approx(STD)


@pytest.mark.parametrize("method, params", [("sam", {"rho": 0.0}), ("fam", {"lam": 0.0}),
                                            ("pgd-at", {"eps": 0.0}), ("art.pgd-at+sam", {"eps": 0.0, "rho": 0.0})])
def test_null_method_reproduces_pytorch_classifier_fit(small, method, params):
    x, y = small
    reference = classifier(4, sgd=True, lr=0.1)
    ours = flat(4, sgd=True, lr=0.1, method=method, **params)
    reference.fit(x, y, batch_size=len(x), nb_epochs=3)
    history = ours.fit(x, np.eye(10, dtype=np.float32)[y], batch_size=len(x), nb_epochs=3)
    assert ours.history is history and len(history) == 3
    for a, b in zip(weights(ours.model), weights(reference.model)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_input_lengths_are_in_the_classifiers_units():
    clf = flat(method="pgd-at", eps=25.5, step_size=5.1, clip=(0.0, 255.0), preprocessing=(MEAN * 255, STD * 255))
    assert clf.flat_method.eps == pytest.approx(0.1) and clf.flat_method.step_size == pytest.approx(0.02)


def test_art_attack_as_method_parameter_and_art_metrics(small):
    x, y = small
    source = classifier(9)
    clf = flat(method="pgd-at", eps=0.1, attack=ProjectedGradientDescent(source, eps=0.1, max_iter=2, verbose=False))
    assert isinstance(clf.flat_method.attack, ARTAttack)
    clf.fit(x, y, batch_size=128, nb_epochs=1)
    assert np.isfinite(loss_sensitivity(clf, x[:32], np.eye(10)[y[:32]]))  # an ART metric takes it as is


def test_clone_for_refitting_keeps_the_method():
    clf = flat(method="sam", rho=0.2)
    clone = clf.clone_for_refitting()
    assert type(clone) is fa.FlatPyTorchClassifier
    assert clone.flat_method.name == "sam" and clone.flat_method.rho == 0.2
    assert clone.model is not clf.model


def test_bad_input(small):
    x, y = small
    with pytest.raises(TypeError, match="'art.lfr' is not a flatplug training method"):
        flat(method="art.lfr")
    with pytest.raises(UnknownPluginError, match="Did you mean 'sam'"):
        flat(method="sma")
    with pytest.raises(ValueError, match="rho: expected a non-negative"):
        flat(method="sam", rho=-0.1)
    with pytest.raises(ValueError, match="method 'lfr' perturbs inputs .* no clip_values"):
        flat(method="lfr", eps=0.1, clip=None)
    with pytest.raises(TypeError, match="method 'sam': .*unexpected keyword argument 'lam'"):
        flat(method="sam", lam=1.0)
    clf = flat()
    with pytest.raises(ValueError, match="training_mode"):
        clf.fit(x, y, training_mode=False)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['shuffle'\\]"):
        clf.fit(x, y, shuffle=False)
    with pytest.raises(ValueError, match="10 labels for 256 inputs"):
        clf.fit(x, y[:10])
