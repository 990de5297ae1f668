"""ART code from ART's own documentation runs unchanged with flatplug's classes in place of ART's.

ART's ``examples/get_started_pytorch.py`` (its README's first example) with ``FlatPyTorchClassifier``
in place of ``PyTorchClassifier``, and ART's Madry-protocol trainer driving it, on real MNIST from
../shared (fewer images and epochs than the example, for the CPU). The calls are the example's
calls, argument for argument; ART's ``PyTorchClassifier`` runs the same script as the control.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

pytest.importorskip("art")

from art.attacks.evasion import FastGradientMethod  # noqa: E402
from art.defences.trainer import AdversarialTrainerMadryPGD  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from art_support import mnist_split, one_thread  # noqa: E402,F401
from conftest import shared_path  # noqa: E402

import flatplug_art as fa  # noqa: E402


class Net(nn.Module):
    """The network of ART's get_started_pytorch.py."""

    def __init__(self):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels=1, out_channels=4, kernel_size=5, stride=1)
        self.conv_2 = nn.Conv2d(in_channels=4, out_channels=10, kernel_size=5, stride=1)
        self.fc_1 = nn.Linear(in_features=4 * 4 * 10, out_features=100)
        self.fc_2 = nn.Linear(in_features=100, out_features=10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv_1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv_2(x)), 2, 2)
        x = x.view(-1, 4 * 4 * 10)
        return self.fc_2(F.relu(self.fc_1(x)))


@pytest.fixture(scope="module")
def mnist():
    xtr, ytr, xte, yte = mnist_split(str(shared_path("data", "mnist")))
    onehot = np.eye(10, dtype=np.float32)  # ART's load_mnist returns one-hot labels
    return (xtr[:2000], onehot[ytr[:2000]]), (xte[:300], onehot[yte[:300]]), 0.0, 1.0


def get_started(classifier_class, mnist, **extra):
    """ART's get_started_pytorch.py, steps 2-7, with ``classifier_class`` as the classifier."""
    (x_train, y_train), (x_test, y_test), min_pixel_value, max_pixel_value = mnist
    torch.manual_seed(0)
    model = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=0.01)
    classifier = classifier_class(
        model=model,
        clip_values=(min_pixel_value, max_pixel_value),
        loss=criterion,
        optimizer=optimizer,
        input_shape=(1, 28, 28),
        nb_classes=10,
        **extra,
    )
    classifier.fit(x_train, y_train, batch_size=64, nb_epochs=1)
    predictions = classifier.predict(x_test)
    accuracy = np.sum(np.argmax(predictions, axis=1) == np.argmax(y_test, axis=1)) / len(y_test)
    attack = FastGradientMethod(estimator=classifier, eps=0.2)
    x_test_adv = attack.generate(x=x_test)
    predictions = classifier.predict(x_test_adv)
    adversarial = np.sum(np.argmax(predictions, axis=1) == np.argmax(y_test, axis=1)) / len(y_test)
    return classifier, accuracy, adversarial


def test_get_started_pytorch_runs_unchanged(mnist):
    _, art_clean, art_adv = get_started(PyTorchClassifier, mnist)
    clf, clean, adv = get_started(fa.FlatPyTorchClassifier, mnist)  # method: SAM, the default
    assert clf.history.method == "sam" and len(clf.history) == 1
    assert art_clean > 0.85 and clean > art_clean - 0.1  # measured 0.88 (ART) and 0.82 (SAM, rho 0.05)
    assert adv < clean - 0.2 and art_adv < art_clean - 0.2  # FGSM at 0.2 hurts both


def test_get_started_with_the_flatness_off_is_arts_run(mnist):
    torch.manual_seed(1)
    art_clf, art_clean, art_adv = get_started(PyTorchClassifier, mnist)
    torch.manual_seed(1)
    clf, clean, adv = get_started(fa.FlatPyTorchClassifier, mnist, method="sam", rho=0.0)
    assert clean == art_clean and adv == art_adv


def test_madry_protocol_trainer_on_the_flat_classifier(mnist):
    """ART's adversarial training example (AdversarialTrainerMadryPGD(classifier, ...).fit(x, y)), flat classifier inside."""
    (x_train, y_train), (x_test, y_test), lo, hi = mnist
    torch.manual_seed(0)
    model = Net()
    classifier = fa.FlatPyTorchClassifier(model=model, clip_values=(lo, hi), loss=nn.CrossEntropyLoss(),
                                          optimizer=optim.Adam(model.parameters(), lr=0.01), input_shape=(1, 28, 28),
                                          nb_classes=10, method="sam", rho=0.05)
    trainer = AdversarialTrainerMadryPGD(classifier, nb_epochs=1, batch_size=128, eps=0.1, eps_step=0.05, max_iter=3,
                                         num_random_init=1)
    before = [p.detach().clone() for p in model.parameters()]
    np.random.seed(0)
    trainer.fit(x_train[:1000], y_train[:1000])
    assert trainer.get_classifier() is classifier and classifier.history.method == "sam"
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert trainer.get_classifier().predict(x_test).shape == y_test.shape
