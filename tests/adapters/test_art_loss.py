"""The loss the user gave is the loss trained: the classifier's torch loss, mapped exactly or refused.

Two independent oracles: the torch loss module itself (the per-sample form reduced must equal
it, for sum and mean, class weights, label smoothing, ignore_index), and ART's own
``PyTorchClassifier.fit`` with that loss (a flat trainer with its flatness switched off must
reproduce it; training the mean where the user asked for the sum changes every SGD step by the
batch size and fails here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("art")

from art_support import classifier, mnist_split, one_thread, tiny_cnn, weights  # noqa: E402,F401
from conftest import shared_path  # noqa: E402

import flatplug_art as fa  # noqa: E402
from flatplug_art._loss import per_sample_form  # noqa: E402

LOSSES = {
    "ce-sum": lambda: nn.CrossEntropyLoss(reduction="sum"),
    "ce-mean": lambda: nn.CrossEntropyLoss(),
    "ce-weighted": lambda: nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2.0, 10)),
    "ce-weighted-sum": lambda: nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2.0, 10), reduction="sum"),
    "ce-smoothing": lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
    "ce-weighted-smoothing": lambda: nn.CrossEntropyLoss(weight=torch.linspace(2.0, 0.5, 10), label_smoothing=0.2),
    "ce-ignore": lambda: nn.CrossEntropyLoss(ignore_index=3),
    "multimargin": lambda: nn.MultiMarginLoss(p=2, margin=0.5, weight=torch.linspace(0.5, 2.0, 10)),
}


@pytest.fixture(scope="module")
def small():
    xtr, ytr, _, _ = mnist_split(str(shared_path("data", "mnist")))
    return xtr[:192], ytr[:192]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_per_sample_form_reduces_to_the_torch_loss(name):
    """On real-shaped random logits (float64), reduce(loss_fn) == the loss module, to rounding."""
    loss = LOSSES[name]()
    loss_fn, reduction = per_sample_form(loss)
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(64, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (64,), generator=g)
    per = loss_fn(logits, y)
    assert per.shape == (64,)
    got = per.sum() if reduction == "sum" else per.mean()
    want = (loss.double() if hasattr(loss, "double") else loss)(logits, y)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert reduction == loss.reduction


@pytest.mark.parametrize("name", ["ce-sum", "ce-weighted", "ce-smoothing", "multimargin"])
def test_null_trainer_reproduces_art_fit_with_that_loss(small, name):
    """SAMTrainer(rho=0) and the null FlatPyTorchClassifier train exactly what ART's fit trains."""
    x, y = small
    reference = classifier(8, sgd=True, lr=0.01, loss=LOSSES[name]())
    by_trainer = classifier(8, sgd=True, lr=0.01, loss=LOSSES[name]())
    by_estimator = classifier(8, sgd=True, lr=0.01, loss=LOSSES[name](), cls=fa.FlatPyTorchClassifier, rho=0.0)
    reference.fit(x, y, batch_size=len(x), nb_epochs=2)
    trainer = fa.SAMTrainer(by_trainer, rho=0.0)
    trainer.fit(x, y, batch_size=len(x), nb_epochs=2, verbose=False)
    by_estimator.fit(x, y, batch_size=len(x), nb_epochs=2)
    assert trainer.history.settings["reduction"] == reference.loss.reduction
    start = weights(classifier(8).model)
    for ref, a, b, w0 in zip(weights(reference.model), weights(by_trainer.model), weights(by_estimator.model), start):
        assert not torch.equal(ref, w0)
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-6)


def test_sum_loss_drives_the_regulariser_and_the_inner_attack_as_a_sum(small):
    """AWP on CrossEntropyLoss(reduction='sum'): the objective recorded is N times the mean run's, step for step."""
    x, y = small
    runs = {}
    for reduction in ("sum", "mean"):
        clf = classifier(3, sgd=True, lr=0.0, loss=nn.CrossEntropyLoss(reduction=reduction))
        trainer = fa.AWPTrainer(clf, eps=0.1, steps=2, gamma=0.01)
        trainer.fit(x, y, batch_size=len(x), nb_epochs=1, verbose=False, seed=4)
        runs[reduction] = trainer.history[0]["loss"]
    assert runs["sum"] == pytest.approx(len(x) * runs["mean"], rel=1e-5)


def test_nll_loss_on_a_log_softmax_network(small):
    x, y = small
    torch.manual_seed(0)
    net = nn.Sequential(*tiny_cnn(2), nn.LogSoftmax(dim=1))
    reference = classifier(2, sgd=True, lr=0.002, loss=nn.NLLLoss(reduction="sum"), net=net)
    torch.manual_seed(0)
    twin = nn.Sequential(*tiny_cnn(2), nn.LogSoftmax(dim=1))
    ours = classifier(2, sgd=True, lr=0.002, loss=nn.NLLLoss(reduction="sum"), net=twin)
    reference.fit(x, y, batch_size=len(x), nb_epochs=2)
    fa.FAMTrainer(ours, lam=0.0).fit(x, y, batch_size=len(x), nb_epochs=2, verbose=False)
    for a, b in zip(weights(ours.model), weights(reference.model)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss, match", [
    (nn.MSELoss(), "MSELoss is not one of them"),
    (nn.BCEWithLogitsLoss(), "BCEWithLogitsLoss is not one of them"),
    (nn.CrossEntropyLoss(reduction="none"), "returns no scalar to train"),
])
def test_losses_that_cannot_be_trained_exactly_are_refused(loss, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fa.SAMTrainer(classifier(0, loss=loss))
    with pytest.raises((TypeError, ValueError), match=match):
        classifier(0, loss=loss, cls=fa.FlatPyTorchClassifier)


def test_a_subclass_that_changes_the_loss_is_refused():
    class Doubled(nn.CrossEntropyLoss):
        def forward(self, logits, y):
            return 2 * super().forward(logits, y)

    with pytest.raises(TypeError, match="Doubled is not one of them"):
        fa.LFRTrainer(classifier(0, loss=Doubled()), eps=0.1)
    assert np.isfinite(float(Doubled()(torch.zeros(2, 10), torch.tensor([0, 1]))))
