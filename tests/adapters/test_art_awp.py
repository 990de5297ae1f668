"""AWPTrainer against ART's own AdversarialTrainerAWPPyTorch, on real MNIST, where the two are meant to agree.

Same network and optimizer, same ART ``ProjectedGradientDescent`` as the inner maximiser (with a
random start: its draws come from numpy's global generator), same data order (both shuffle with
``np.random.shuffle`` after ``np.random.seed``), several batches and epochs, warm-up on: the
weights must agree to float rounding, in PGD and in TRADES mode. ART's proxy model is plain
SGD with lr 1: ART divides the proxy's step by ``||proxy - w|| + 1e-8``, and with a small
proxy lr (0.01 in ART's example) that 1e-8 is comparable to the step itself and shrinks ART's
perturbation by up to ~1% (measured: weights then differ by 1.3e-4 after 8 steps, against
2e-8 with lr 1). A wrong perturbation scale, a perturbed bias, a different KL term, a missing
warm-up or a different shuffle each move the weights by 1e-3 or more here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("art")

from art.attacks.evasion import ProjectedGradientDescent  # noqa: E402
from art.defences.trainer import AdversarialTrainerAWPPyTorch  # noqa: E402
from art_support import classifier, mnist_split, one_thread, weights  # noqa: E402,F401
from conftest import shared_path  # noqa: E402

import flatplug_art as fa  # noqa: E402


@pytest.fixture(scope="module")
def data():
    xtr, ytr, xte, yte = mnist_split(str(shared_path("data", "mnist")))
    return xtr[:256], ytr[:256], xte[:100], yte[:100]


def attack_on(clf):
    return ProjectedGradientDescent(clf, eps=0.1, eps_step=0.05, max_iter=2, num_random_init=1, batch_size=64,
                                    verbose=False)


@pytest.mark.parametrize("mode,reduction", [("PGD", "mean"), ("TRADES", "mean"), ("PGD", "sum"), ("TRADES", "sum")])
def test_awp_trainer_reproduces_arts_awp_trainer(data, mode, reduction):
    """Also with ART's test fixture's loss, ``CrossEntropyLoss(reduction="sum")``: ART's TRADES term is
    then the summed cross-entropy plus beta times the batch-*mean* KL (flatplug summed the KL, 1.3e-3
    off in the weights)."""
    x, y, xv, yv = data
    lr = 0.05 if reduction == "mean" else 0.05 / 64
    loss = torch.nn.CrossEntropyLoss(reduction=reduction)
    reference, proxy = classifier(5, sgd=True, lr=lr, loss=loss), classifier(6, sgd=True, lr=1.0, loss=loss)
    np.random.seed(0)
    AdversarialTrainerAWPPyTorch(reference, proxy, attack_on(reference), mode=mode, gamma=0.01, beta=6.0,
                                 warmup=1).fit(x, y, batch_size=64, nb_epochs=2)
    ours = classifier(5, sgd=True, lr=lr, loss=loss)
    trainer = fa.AWPTrainer(ours, attack=attack_on(ours), mode=mode, gamma=0.01, beta=6.0, warmup=1)
    np.random.seed(0)
    assert trainer.fit(x, y, validation_data=None, batch_size=64, nb_epochs=2, verbose=False) is None
    start = weights(classifier(5).model)
    for a, b, w0 in zip(weights(ours.model), weights(reference.model), start):
        assert float((b - w0).abs().max()) > 1e-3  # it trained
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert trainer.method.mode == mode.lower() and len(trainer.history) == 2


def test_warmup_and_gamma_matter_at_this_tolerance(data):
    """The control for the test above: without the warm-up, or with another gamma, ART's weights are not reproduced."""
    x, y, _, _ = data
    reference, proxy = classifier(5, sgd=True, lr=0.05), classifier(6, sgd=True, lr=1.0)
    np.random.seed(0)
    AdversarialTrainerAWPPyTorch(reference, proxy, attack_on(reference), mode="PGD", gamma=0.01, beta=6.0,
                                 warmup=1).fit(x, y, batch_size=64, nb_epochs=2)
    for params in ({"gamma": 0.01, "warmup": 0}, {"gamma": 0.02, "warmup": 1}):
        ours = classifier(5, sgd=True, lr=0.05)
        np.random.seed(0)
        fa.AWPTrainer(ours, attack=attack_on(ours), mode="pgd", **params).fit(x, y, batch_size=64, nb_epochs=2,
                                                                            verbose=False)
        gap = max(float((a - b).abs().max()) for a, b in zip(weights(ours.model), weights(reference.model)))
        assert gap > 1e-4, params


def test_fit_generator_and_validation_as_in_arts_awp_example(data):
    """ART's AWP example: fit_generator(art_datagen, validation_data=(x_test, y_test), nb_epochs=..., scheduler=...)."""
    from art.data_generators import PyTorchDataGenerator
    from torch.utils.data import DataLoader, TensorDataset

    x, y, xv, yv = data
    clf = classifier(1, sgd=True, lr=0.05)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64, shuffle=True)
    art_datagen = PyTorchDataGenerator(iterator=loader, size=x.shape[0], batch_size=64)
    schedule = torch.optim.lr_scheduler.MultiStepLR(clf.optimizer, milestones=[1], gamma=0.1)
    trainer = fa.AWPTrainer(clf, eps=0.1, steps=3, mode="TRADES", warmup=1)
    trainer.fit_generator(art_datagen, validation_data=(xv, np.eye(10)[yv]), nb_epochs=2, scheduler=schedule,
                          verbose=False)
    assert [r["lr"] for r in trainer.history] == pytest.approx([0.05, 0.005])
    last = trainer.history[-1]
    assert last["val_accuracy"] == pytest.approx(float((clf.predict(xv).argmax(1) == yv).mean()))
    assert 0.0 <= last["val_robust_accuracy"] <= last["val_accuracy"]
