"""FlatPyTorchClassifier: a PyTorchClassifier whose fit is a flatplug method, with ART's fit contract.

ART's own ``PyTorchClassifier`` is the control: with the flatness switched off (``rho=0``,
``lam=0``, ``eps=0``) a flat fit is plain training of the classifier's loss, so under the same
``torch.manual_seed`` it must reproduce ART's ``fit`` weight for weight, shuffled mini-batches
included (a drift here means the batch order, the loss or the mode differs from ART's).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("art")

from art.attacks.evasion import ProjectedGradientDescent  # noqa: E402
from art.defences.trainer import AdversarialTrainer, AdversarialTrainerMadryPGD  # noqa: E402
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


def assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    for wa, wb in zip(weights(a.model), weights(b.model)):
        torch.testing.assert_close(wa, wb, rtol=rtol, atol=atol)


def test_is_a_pytorch_classifier_with_art_and_method_keywords_split():
    clf = flat(method="asam", rho=0.3, eta=0.02)
    assert isinstance(clf, PyTorchClassifier)
    assert clf.flat_method.name == "asam" and clf.flat_method.rho == 0.3 and clf.flat_method.eta == 0.02
    np.testing.assert_allclose(clf.clip_values, [0.0, 1.0])
    assert float(clf.preprocessing.mean) == pytest.approx(MEAN) and float(clf.preprocessing.std) == pytest.approx(STD)


@pytest.mark.parametrize("method, params", [("sam", {"rho": 0.0}), ("fam", {"lam": 0.0}),
                                            ("pgd-at", {"eps": 0.0}), ("art.pgd-at+sam", {"eps": 0.0, "rho": 0.0})])
@pytest.mark.parametrize("training_mode", [True, False])
def test_null_method_reproduces_art_fit_batch_for_batch(small, method, params, training_mode):
    """Shuffled mini-batches from torch's global generator, ART's training mode, ART's return value and final mode."""
    x, y = small
    reference = classifier(4, sgd=True, lr=0.1)
    ours = flat(4, sgd=True, lr=0.1, method=method, **params)
    torch.manual_seed(11)
    reference.fit(x, y, batch_size=64, nb_epochs=2, training_mode=training_mode)
    torch.manual_seed(11)
    assert ours.fit(x, np.eye(10, dtype=np.float32)[y], batch_size=64, nb_epochs=2, training_mode=training_mode) is None
    assert len(ours.history) == 2 and ours.history.method == method
    assert ours.model.training is training_mode and reference.model.training is training_mode
    assert_same_weights(ours, reference)


@pytest.mark.parametrize("defence", ["predict-only", "fit-only"])
@pytest.mark.parametrize("training_mode", [True, False])
def test_fit_applies_the_fit_time_defences_in_either_training_mode(small, training_mode, defence):
    """ART's fit applies the defences flagged ``apply_fit`` whatever ``training_mode`` is, and never the
    predict-only ones. With ``training_mode=False`` flatplug picked the defences by its wrapper's eval
    mode: a predict-only defence ran and a fit-only one did not (weights 1.5e-3 to 3.2e-3 off ART's
    after one epoch in the audit). One numpy defence before the standardisation: the chain ART's
    PyTorchClassifier runs with numpy defences."""
    from art.defences.preprocessor import FeatureSqueezing, SpatialSmoothing

    def defences():
        if defence == "predict-only":
            return [FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=2)]
        return [SpatialSmoothing(window_size=3, apply_fit=True, apply_predict=False)]

    x, y = small
    reference = classifier(4, sgd=True, lr=0.1, preprocessing_defences=defences())
    ours = flat(4, sgd=True, lr=0.1, method="sam", rho=0.0, preprocessing_defences=defences())
    torch.manual_seed(11)
    reference.fit(x, y, batch_size=64, nb_epochs=1, training_mode=training_mode)
    torch.manual_seed(11)
    ours.fit(x, y, batch_size=64, nb_epochs=1, training_mode=training_mode)
    assert ours.model.training is training_mode and reference.model.training is training_mode
    assert_same_weights(ours, reference)


def test_unseeded_fit_follows_the_global_generators(small):
    """No seed=: two runs after the same torch.manual_seed are identical (ART's contract), and differ otherwise."""
    x, y = small
    runs = []
    for seed in (5, 5, 6):
        clf = flat(1, method="pgd-at", eps=0.1, steps=2)
        torch.manual_seed(seed)
        clf.fit(x, y, batch_size=64, nb_epochs=1)
        runs.append(weights(clf.model))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_fit_ignores_keywords_as_art_does_and_keeps_seed(small):
    """ART's fit ignores extra keywords (its test_fit_kwargs passes callbacks); ``seed=`` is flatplug's extra."""
    x, y = small
    a, b = flat(2), flat(2)
    a.fit(x, y, batch_size=64, nb_epochs=1, callbacks=["ignored"], validation_data=(x, y), seed=3)
    torch.manual_seed(0)  # seed=3 reseeds, so whatever came before does not matter
    b.fit(x, y, batch_size=64, nb_epochs=1, seed=3)
    assert_same_weights(a, b, rtol=0, atol=0)


def test_madry_pgd_trainer_drives_the_flat_classifier(small):
    """AdversarialTrainerMadryPGD passes validation_data to fit: the flat classifier takes it, like ART's own."""
    x, y = small
    clf = flat(3, method="sam", rho=0.05)
    trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=1, batch_size=128, eps=0.1, eps_step=0.05, max_iter=2,
                                         num_random_init=0)
    trainer.fit(x, y)
    assert trainer.get_classifier() is clf and clf.history.method == "sam"


def test_input_lengths_are_in_the_classifiers_units():
    clf = flat(method="pgd-at", eps=25.5, step_size=5.1, clip=(0.0, 255.0), preprocessing=(MEAN * 255, STD * 255))
    assert clf.flat_method.eps == pytest.approx(0.1) and clf.flat_method.step_size == pytest.approx(0.02)


def test_parameters_not_given_are_the_core_defaults():
    from flatplug.training import LFR, PGDAT

    lfr, pgd = flat(method="lfr", eps=0.1).flat_method, flat(method="pgd-at").flat_method
    reference_lfr, reference_pgd = LFR(eps=0.1), PGDAT()
    assert {k: v for k, v in lfr.settings().items()} == reference_lfr.settings()
    assert pgd.settings() == reference_pgd.settings()


def test_art_attack_as_method_parameter_and_art_metrics(small):
    x, y = small
    source = classifier(9)
    clf = flat(method="pgd-at", eps=0.1, attack=ProjectedGradientDescent(source, eps=0.1, max_iter=2, verbose=False))
    assert isinstance(clf.flat_method.attack, ARTAttack)
    clf.fit(x, y, batch_size=128, nb_epochs=1)
    assert np.isfinite(loss_sensitivity(clf, x[:32], np.eye(10)[y[:32]]))  # an ART metric takes it as is


def test_adversarial_trainer_calls_fit_per_batch(small):
    x, y = small
    clf = flat(0, method="sam", rho=0.05)
    np.random.seed(0)
    AdversarialTrainer(clf, ProjectedGradientDescent(clf, eps=0.1, max_iter=2, verbose=False), ratio=1.0).fit(
        x, y, batch_size=128, nb_epochs=1)
    assert clf.history.method == "sam" and len(clf.history) == 1  # the last per-batch fit


def test_clone_for_refitting_and_set_params_keep_the_method():
    clf = flat(method="pgd-at", eps=0.1)
    clone = clf.clone_for_refitting()
    assert type(clone) is fa.FlatPyTorchClassifier
    assert clone.flat_method.name == "pgd-at" and clone.flat_method.eps == 0.1
    assert clone.model is not clf.model
    clf.set_params(clip_values=(0.0, 2.0))  # the method's eps is rebuilt in the new units
    assert clf.flat_method.eps == pytest.approx(0.05)


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
    with pytest.raises(TypeError, match="MSELoss is not one of them"):
        flat(loss=torch.nn.MSELoss())
    with pytest.raises(ValueError, match="10 labels for 256 inputs"):
        flat().fit(x, y[:10])


def test_inputs_art_fit_accepts_are_accepted_by_methods_that_do_not_perturb_inputs(small):
    """ART's fit trains on whatever arrays it is given: data a hair outside clip_values, per-feature
    clip_values, a numpy integer nb_epochs, and nb_epochs=0 (no pass). flatplug refused all four even for
    methods that never move the inputs; now those methods train as ART does, and a method that perturbs
    inputs still refuses, naming the exact values."""
    x, y = small
    x = x + np.float32(1e-6)  # max 1.00000095 > clip 1
    reference = classifier(4, sgd=True, lr=0.1)
    ours = flat(4, sgd=True, lr=0.1, method="sam", rho=0.0)
    torch.manual_seed(11)
    reference.fit(x, y, batch_size=64, nb_epochs=np.int64(1))
    torch.manual_seed(11)
    ours.fit(x, y, batch_size=64, nb_epochs=np.int64(1))
    assert_same_weights(ours, reference)
    before = weights(ours.model)
    ours.fit(x, y, batch_size=64, nb_epochs=0, training_mode=False)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(ours.model))) and not ours.model.training
    with pytest.raises(ValueError, match=r"values span \[9.99999997e-07, 1.00000095\], outside the classifier's clip_values"):
        flat(4, method="pgd-at", eps=0.1).fit(x, y, nb_epochs=1)
    per_feature = (np.zeros((1, 28, 28), np.float32), np.full((1, 28, 28), 1.0, np.float32))
    per_feature[1][0, 0, 0] = 2.0
    reference = classifier(4, sgd=True, lr=0.1, clip=per_feature)
    ours = flat(4, sgd=True, lr=0.1, clip=per_feature, method="sam", rho=0.0)
    torch.manual_seed(11)
    reference.fit(x, y, batch_size=64, nb_epochs=1)
    torch.manual_seed(11)
    ours.fit(x, y, batch_size=64, nb_epochs=1)
    assert_same_weights(ours, reference)
    with pytest.raises(ValueError, match="per-feature clip ranges are not supported"):
        flat(4, clip=per_feature, method="pgd-at", eps=0.1)
    with pytest.raises(ValueError, match="nb_epochs: expected 0 or more"):
        ours.fit(x, y, nb_epochs=-1)


def test_label_rewriting_defences_are_refused_with_a_clear_error(small):
    """LabelSmoothing (a fit-time defence that rewrites y) failed inside ART on the first batch with
    "Labels `y` cannot be None."; flatplug's methods train on the labels given, so it is refused up front."""
    from art.defences.preprocessor import LabelSmoothing

    x, y = small
    clf = flat(4, method="sam", rho=0.05, preprocessing_defences=[LabelSmoothing()])
    with pytest.raises(TypeError, match="LabelSmoothing rewrites the labels"):
        clf.fit(x, y, nb_epochs=1)
    with pytest.raises(TypeError, match="LabelSmoothing rewrites the labels"):
        fa.SAMTrainer(classifier(4, preprocessing_defences=[LabelSmoothing()]), rho=0.05)


def test_arts_positional_arguments_are_accepted():
    """PyTorchClassifier takes all its arguments positionally (use_amp, opt_level, loss_scale,
    channels_first, clip_values, ...); a pipeline that builds it that way must be able to swap in the
    flat classifier. They were keyword-only after ``optimizer``."""
    from art_support import tiny_cnn

    net = tiny_cnn(0)
    opt = torch.optim.SGD(net.parameters(), 0.1)
    args = (net, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10, opt, False, "O1", "dynamic", True, (0.0, 1.0), None,
            None, (MEAN, STD), "cpu")
    ours, theirs = fa.FlatPyTorchClassifier(*args, method="sam", rho=0.1), PyTorchClassifier(*args)
    for key in ("clip_values", "channels_first", "input_shape", "nb_classes"):
        np.testing.assert_equal(getattr(ours, key), getattr(theirs, key))
    assert float(ours.preprocessing.mean) == pytest.approx(MEAN) and ours.flat_method.rho == 0.1
    with pytest.raises(TypeError, match="multiple values for argument 'clip_values'"):
        fa.FlatPyTorchClassifier(*args[:10], clip_values=(0.0, 1.0))
