"""The ART trainers: ART's own ``fit`` as the oracle, unit conversion, preprocessing, schedulers, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("art")

from art.attacks.evasion import ProjectedGradientDescent  # noqa: E402
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch  # noqa: E402
from art.defences.preprocessor import SpatialSmoothing  # noqa: E402
from art.defences.trainer import AdversarialTrainerAWPPyTorch  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from art_support import MEAN, STD, classifier, mnist_split, one_thread, tiny_cnn, weights  # noqa: E402,F401
from conftest import shared_path  # noqa: E402

import flatplug_art as fa  # noqa: E402
from flatplug_art.attack import ARTAttack  # noqa: E402
from flatplug_art._space import InputSpace  # noqa: E402


@pytest.fixture(scope="module")
def small():
    xtr, ytr, xte, yte = mnist_split(str(shared_path("data", "mnist")))
    return xtr[:256], ytr[:256], xte[:200], yte[:200]


# Every trainer with its flatness switched off (rho = lam = gamma = eps = 0) is plain cross-entropy training, so with
# one full batch per epoch (sample order cannot matter) it must reproduce ART's own PyTorchClassifier.fit: the same
# network, the classifier's normalisation, its optimizer (SGD: linear in the gradient, so summation-order rounding stays
# at rounding level; Adam's first steps are sign-like and would amplify it).
NULL_TRAINERS = {
    "sam": lambda c: fa.SAMTrainer(c, rho=0.0),
    "asam": lambda c: fa.SAMTrainer(c, rho=0.0, adaptive=True),
    "fam": lambda c: fa.FAMTrainer(c, lam=0.0),
    "lfr": lambda c: fa.LFRTrainer(c, eps=0.0, lam=0.0),
    "awp": lambda c: fa.AWPTrainer(c, eps=0.0, gamma=0.0),
    "pgd-at": lambda c: fa.FlatAdversarialTrainer(c, "none", eps=0.0),
    "pgd-at+sam": lambda c: fa.FlatAdversarialTrainer(c, "sam", eps=0.0, rho=0.0),
    "pgd-at+fam": lambda c: fa.FlatAdversarialTrainer(c, "fam", eps=0.0, lam=0.0),
}


@pytest.mark.parametrize("name", sorted(NULL_TRAINERS))
def test_null_flatness_reproduces_art_fit(small, name):
    x, y, _, _ = small
    reference, ours = classifier(7, sgd=True, lr=0.1), classifier(7, sgd=True, lr=0.1)
    reference.fit(x, y, batch_size=len(x), nb_epochs=3)
    trainer = NULL_TRAINERS[name](ours)
    assert trainer.fit(x, y, batch_size=len(x), nb_epochs=3, verbose=False) is None  # ART's trainers return None
    assert trainer.get_classifier() is ours and len(trainer.history) == 3
    for a, b, w0 in zip(weights(ours.model), weights(reference.model), weights(classifier(7).model)):
        assert not torch.equal(a, w0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_hot_and_index_labels_train_identically(small):
    x, y, _, _ = small
    runs = []
    for labels in (y, np.eye(10, dtype=np.float32)[y], y[:, None]):
        clf = classifier(1)
        fa.SAMTrainer(clf, rho=0.05).fit(x, labels, batch_size=64, nb_epochs=1, seed=3, verbose=False)
        runs.append(weights(clf.model))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clip_range_is_converted_exactly(small):
    """A classifier on 0..255 data (eps 25.5) trains exactly like the same one on [0, 1] data (eps 0.1)."""
    x, y, _, _ = small
    unit = classifier(2, sgd=True, lr=0.1)
    byte = classifier(2, sgd=True, lr=0.1, clip=(0.0, 255.0), preprocessing=(MEAN * 255, STD * 255))
    fa.LFRTrainer(unit, eps=0.1, lam=0.1, steps=2, adversarial=True, pgd_steps=2).fit(
        x, y, batch_size=64, nb_epochs=1, seed=4, verbose=False)
    fa.LFRTrainer(byte, eps=25.5, lam=0.1, steps=2, adversarial=True, pgd_steps=2).fit(
        x * 255, y, batch_size=64, nb_epochs=1, seed=4, verbose=False)
    for a, b in zip(weights(unit.model), weights(byte.model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_module_matches_art_predict_and_loss_gradient():
    """PreprocessedModel == ART's predict, and its input gradient == ART's loss_gradient (times N: ART's mean loss)."""

    class Wobble(PreprocessorPyTorch):  # a differentiable torch preprocessing defence
        def __init__(self):
            super().__init__(device_type="cpu", apply_fit=True, apply_predict=True)

        def forward(self, x, y=None):
            return x + 0.1 * torch.sin(20 * x), y

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    clf = PyTorchClassifier(net, nn.CrossEntropyLoss(), (3, 8, 8), 5, clip_values=(0.0, 2.0),
                            preprocessing_defences=[Wobble()],
                            preprocessing=(np.array([0.2, 0.4, 0.6]), np.array([0.5, 1.0, 2.0])), device_type="cpu")
    g = torch.Generator().manual_seed(1)
    x = (2 * torch.rand(6, 3, 8, 8, generator=g)).numpy()
    y = torch.randint(0, 5, (6,), generator=g).numpy()
    module = fa.PreprocessedModel(clf).eval()
    u = torch.from_numpy(x / 2).requires_grad_(True)
    logits = module(u)
    np.testing.assert_allclose(logits.detach().numpy(), clf.predict(x), rtol=1e-5, atol=1e-5)
    (grad_u,) = torch.autograd.grad(nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="sum"), u)
    art_grad = clf.loss_gradient(x, np.eye(5, dtype=np.float32)[y]) * len(x)  # d/dx of the summed loss; du = dx / 2
    np.testing.assert_allclose(grad_u.numpy() / 2, art_grad, rtol=1e-4, atol=1e-6)


def test_channels_last_preprocessing_matches_art():
    class NHWC(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2))

    torch.manual_seed(0)
    clf = PyTorchClassifier(NHWC(), nn.CrossEntropyLoss(), (8, 8, 3), 5, channels_first=False, clip_values=(0, 1),
                            preprocessing=(np.array([0.2, 0.4, 0.6]), np.array([0.5, 1.0, 2.0])), device_type="cpu")
    x = torch.rand(4, 8, 8, 3, generator=torch.Generator().manual_seed(2)).numpy()
    with torch.no_grad():
        out = fa.PreprocessedModel(clf).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, clf.predict(x), rtol=1e-5, atol=1e-6)


def test_art_attack_adapter_converts_units(small):
    x, y, _, _ = small
    clf = classifier(0, clip=(0.0, 255.0), preprocessing=(MEAN * 255, STD * 255))
    attack = ProjectedGradientDescent(clf, eps=25.5, eps_step=8.0, max_iter=3, num_random_init=0, verbose=False)
    expected = attack.generate(x[:16] * 255, y=np.eye(10, dtype=np.float32)[y[:16]])
    got = ARTAttack(attack, InputSpace.of(clf), 10)(torch.from_numpy(x[:16]), torch.from_numpy(y[:16]))
    assert got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(got.numpy() * 255, expected, rtol=0, atol=1e-3)
    trainer = fa.FlatAdversarialTrainer(clf, "sam", attack=attack)  # eps defaults to the attack's, in [0, 1] units
    assert trainer.method.pgd.eps == pytest.approx(0.1) and isinstance(trainer.method.pgd.attack, ARTAttack)


def test_art_attack_as_the_inner_maximiser(small):
    """With an ART PGD as inner maximiser, one AWP epoch with gamma=0 == ART's own fit on that attack's examples."""
    x, y, _, _ = small
    ours, reference = classifier(5, sgd=True, lr=0.1), classifier(5, sgd=True, lr=0.1)
    attack = ProjectedGradientDescent(ours, eps=0.1, eps_step=0.05, max_iter=2, num_random_init=0, verbose=False)
    fa.AWPTrainer(ours, gamma=0.0, attack=attack).fit(x, y, batch_size=len(x), nb_epochs=1, verbose=False)
    ref_attack = ProjectedGradientDescent(reference, eps=0.1, eps_step=0.05, max_iter=2, num_random_init=0,
                                          verbose=False)
    reference.fit(ref_attack.generate(x, y=np.eye(10, dtype=np.float32)[y]), y, batch_size=len(x), nb_epochs=1)
    for a, b in zip(weights(ours.model), weights(reference.model)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch2_scheduler_accepted_where_art_rejects_it(small):
    x, y, _, _ = small
    clf = classifier(0)
    schedule = torch.optim.lr_scheduler.LambdaLR(clf.optimizer, lambda e: 0.5 ** e)
    assert not isinstance(schedule, torch.optim.lr_scheduler._LRScheduler)  # a torch 2 LRScheduler
    art_awp = AdversarialTrainerAWPPyTorch(clf, classifier(1), ProjectedGradientDescent(clf, eps=0.1),
                                           mode="PGD", gamma=0.01, beta=6.0, warmup=0)
    with pytest.raises(ValueError, match="scheduler"):
        art_awp.fit(x, y, nb_epochs=1, scheduler=schedule)
    trainer = fa.SAMTrainer(clf)
    trainer.fit(x, y, batch_size=128, nb_epochs=3, scheduler=schedule, verbose=False)
    assert trainer.history.column("lr") == pytest.approx([3e-3, 1.5e-3, 7.5e-4])
    factory = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)  # noqa: E731
    trainer = fa.FAMTrainer(classifier(0))
    trainer.fit(x, y, batch_size=128, nb_epochs=2, scheduler=factory, verbose=False)
    assert trainer.history.column("lr") == pytest.approx([3e-3, 3e-4])


def test_validation_data_adds_accuracies(small):
    """Clean validation accuracy is ART's predict's; robust accuracy is that of the trainer's own PGD (replayed)."""
    x, y, xv, yv = small
    clf = classifier(0)
    trainer = fa.AWPTrainer(clf, eps=0.1, steps=2)
    trainer.fit(x, y, validation_data=(xv, np.eye(10)[yv]), batch_size=64, nb_epochs=2, verbose=False, seed=1)
    last = trainer.history[-1]
    assert last["val_accuracy"] == pytest.approx(float((clf.predict(xv).argmax(1) == yv).mean()))
    rng_state = torch.get_rng_state()
    from flatplug.attacks import pgd
    module = trainer.module.eval()
    adv = pgd(module, torch.from_numpy(xv), torch.from_numpy(yv), eps=0.1, steps=2, seed=None)
    torch.set_rng_state(rng_state)
    replay = float((clf.predict(adv.numpy()).argmax(1) == yv).mean())
    assert abs(last["val_robust_accuracy"] - replay) <= 0.03  # another random start: a few images may differ
    assert last["val_robust_accuracy"] < last["val_accuracy"] - 0.05
    sam = fa.SAMTrainer(clf)
    sam.fit(x, y, validation_data=(xv, yv), batch_size=64, nb_epochs=1, verbose=False)
    assert "val_robust_accuracy" not in sam.history[0]
    unbounded = classifier(0, clip=None)
    free = fa.SAMTrainer(unbounded)
    free.fit(x * 3 - 1, y, validation_data=(xv * 3 - 1, yv), batch_size=64, nb_epochs=1, verbose=False)
    assert free.history[0]["val_accuracy"] == pytest.approx(float((unbounded.predict(xv * 3 - 1).argmax(1) == yv).mean()))


def test_fam_layer_by_its_name_in_the_network(small):
    x, y, _, _ = small
    clf = classifier(0)
    trainer = fa.FAMTrainer(clf, lam=0.1, layer="5")
    assert trainer.method.layer is clf.model[5]
    trainer.fit(x, y, batch_size=128, nb_epochs=1, verbose=False)
    with pytest.raises(ValueError, match="no module named 'fc'"):
        fa.FAMTrainer(clf, layer="fc")


def test_fit_generator_takes_arts_awp_argument_order(small):
    """ART's AdversarialTrainerAWPPyTorch.fit_generator(generator, validation_data, nb_epochs, scheduler)."""
    from art.data_generators import NumpyDataGenerator

    x, y, xv, yv = small
    gen = NumpyDataGenerator(x, np.eye(10, dtype=np.float32)[y], batch_size=64, shuffle=False, drop_remainder=False)
    trainer = fa.SAMTrainer(classifier(0))
    assert trainer.fit_generator(gen, (xv, yv), 2, None, verbose=False) is None
    assert len(trainer.history) == 2 and "val_accuracy" in trainer.history[1]


# -- bad input -------------------------------------------------------------------------------------------------------

def test_not_a_pytorch_classifier():
    from art.estimators.classification import SklearnClassifier
    from sklearn.linear_model import LogisticRegression

    for bad in (tiny_cnn(), SklearnClassifier(LogisticRegression())):
        with pytest.raises(TypeError, match="expected an ART PyTorchClassifier.*got"):
            fa.SAMTrainer(bad)


@pytest.mark.parametrize("build, match", [
    (lambda c: fa.LFRTrainer(c, eps=0.1, lam=-1.0), "lam: expected a non-negative"),
    (lambda c: fa.LFRTrainer(c, eps=-0.1), "eps: expected a non-negative"),
    (lambda c: fa.SAMTrainer(c, rho=-0.05), "rho: expected a non-negative"),
    (lambda c: fa.FAMTrainer(c, lam=-0.01), "lam: expected a non-negative"),
    (lambda c: fa.AWPTrainer(c, eps=0.1, gamma=-1.0), "gamma: expected a non-negative"),
    (lambda c: fa.AWPTrainer(c, eps=0.1, step_size=0.0), "step_size: expected a positive"),
    (lambda c: fa.FlatAdversarialTrainer(c, "sam", eps=-1.0), "eps: expected a non-negative"),
    (lambda c: fa.FlatAdversarialTrainer(c, "sharp", eps=0.1), "flatness: expected one of"),
    (lambda c: fa.FlatAdversarialTrainer(c, "sam"), "eps is required"),
    (lambda c: fa.LFRTrainer(c, eps=0.1, attack=object()), "attack: only used"),
])
def test_bad_parameters(build, match):
    with pytest.raises(ValueError, match=match):
        build(classifier(0))


def test_wrong_keyword_arguments_name_the_supported_ones(small):
    x, y, _, _ = small
    with pytest.raises(TypeError, match="takes rho, eta; got unexpected \\['lam'\\]"):
        fa.FlatAdversarialTrainer(classifier(0), "sam", eps=0.1, lam=1.0)
    with pytest.warns(UserWarning, match="ignored keyword arguments \\['epochs'\\]"):  # ART ignores them too
        fa.SAMTrainer(classifier(0)).fit(x[:64], y[:64], epochs=2, verbose=False)
    with pytest.raises(TypeError, match="ART EvasionAttack .* got int"):
        fa.AWPTrainer(classifier(0), eps=0.1, attack=3)


@pytest.mark.parametrize("build", [
    lambda c: fa.LFRTrainer(c, eps=0.1),
    lambda c: fa.AWPTrainer(c, eps=0.1),
    lambda c: fa.FlatAdversarialTrainer(c, "fam", eps=0.1),
])
def test_input_perturbing_trainers_need_clip_values(build):
    with pytest.raises(ValueError, match="no clip_values; build the PyTorchClassifier with clip_values=\\(0, 1\\)"):
        build(classifier(0, clip=None))


def test_weight_space_trainers_run_without_clip_values(small):
    x, y, _, _ = small
    clf = classifier(0, clip=None)
    before = weights(clf.model)
    fa.SAMTrainer(clf).fit(x * 3 - 1, y, batch_size=128, nb_epochs=1, verbose=False)  # data need not be in [0, 1]
    assert any(not torch.equal(a, b) for a, b in zip(weights(clf.model), before))


def test_labels_that_do_not_match(small):
    x, y, _, _ = small
    trainer = fa.SAMTrainer(classifier(0))
    with pytest.raises(ValueError, match="255 labels for 256 inputs"):
        trainer.fit(x, y[:-1], verbose=False)
    with pytest.raises(ValueError, match="one-hot labels have 9 columns but the classifier has 10 classes"):
        trainer.fit(x, np.eye(9)[y % 9], verbose=False)
    with pytest.raises(ValueError, match="must lie in 0..9 .* got min 1 and max 10"):
        trainer.fit(x, np.where(y == 0, 10, y), verbose=False)
    with pytest.raises(ValueError, match="whole class indices"):
        trainer.fit(x, y + 0.5, verbose=False)


def test_data_outside_the_clip_range(small):
    x, y, _, _ = small
    with pytest.raises(ValueError, match=r"x: values span \[0, 255\], outside the classifier's clip_values \[0, 1\]"):
        fa.LFRTrainer(classifier(0), eps=0.1).fit(x * 255, y, verbose=False)


def test_missing_optimizer_and_targeted_attack_and_numpy_defence(small):
    x, y, _, _ = small
    clf = classifier(0)
    clf._optimizer = None
    with pytest.raises(ValueError, match="no optimizer; build the PyTorchClassifier with optimizer="):
        fa.SAMTrainer(clf).fit(x, y, verbose=False)
    clf = classifier(0)
    targeted = ProjectedGradientDescent(clf, eps=0.1, targeted=True, verbose=False)
    with pytest.raises(ValueError, match="targeted attacks cannot drive adversarial training"):
        fa.AWPTrainer(clf, attack=targeted)
    smoothed = classifier(0, preprocessing_defences=[SpatialSmoothing(window_size=3)])
    with pytest.raises(TypeError, match="method 'awp' differentiates .* SpatialSmoothing run in numpy"):
        fa.AWPTrainer(smoothed, eps=0.1)


def test_numpy_defences_outside_the_gradient_path_are_allowed(small):
    """SpatialSmoothing / FeatureSqueezing (apply_fit=False) do not touch training; validation predicts through them."""
    from art.defences.preprocessor import FeatureSqueezing

    x, y, xv, yv = small
    for defence in (SpatialSmoothing(window_size=3), FeatureSqueezing(clip_values=(0, 1), bit_depth=2)):
        plain, defended = classifier(6, sgd=True, lr=0.1), classifier(6, sgd=True, lr=0.1,
                                                                      preprocessing_defences=[defence])
        fa.SAMTrainer(plain).fit(x, y, batch_size=64, nb_epochs=1, verbose=False, seed=2)
        trainer = fa.SAMTrainer(defended)
        trainer.fit(x, y, validation_data=(xv, yv), batch_size=64, nb_epochs=1, verbose=False, seed=2)
        for a, b in zip(weights(plain.model), weights(defended.model)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # apply_fit=False: training never saw the defence
        squeezed, _ = defence(xv)  # ART's own test_defences_predict oracle: defend in numpy, then predict
        expected = float((plain.predict(squeezed.astype(np.float32)).argmax(1) == yv).mean())
        assert trainer.history[0]["val_accuracy"] == pytest.approx(expected)
