"""ART's own PyTorch classifier tests, ported to FlatPyTorchClassifier with ART's PyTorchClassifier as the control.

A representative subset of ART's ``tests/estimators/classification/test_deeplearning_common.py``
and ``test_deeplearning_specific.py`` (fit, fit kwargs, fit_generator, predict, shapes, loss and
class gradients, compute_loss, defences, pickle and state, save, clone_for_refitting, repr,
nb_classes, input_shape), written anew. ART's fixture classifier is rebuilt as ART's
``get_image_classifier_pt`` builds it (a 7x7 convolution to one channel, 4x4 max-pooling, a 25 -> 10
linear layer, ``CrossEntropyLoss(reduction="sum")``, Adam lr 0.01, ``clip_values=(0, 1)``), with
seeded initial weights instead of ART's stored ones, and ART's data sizes (1,000 training and 100
test images, batches of 16) from the real MNIST in ../shared. ART's expected values are used
where they do not depend on its data (shapes, class count, repr fragments); everything else is
compared with the control classifier in the same test: a FlatPyTorchClassifier must predict,
differentiate and (with its flatness switched off) train exactly as ART's own class does.
"""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("art")

from art.data_generators import PyTorchDataGenerator  # noqa: E402
from art.defences.preprocessor import JpegCompression, SpatialSmoothing  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from art_support import mnist_split, one_thread  # noqa: E402,F401
from conftest import shared_path  # noqa: E402

import flatplug_art as fa  # noqa: E402

BATCH = 16  # ART's default_batch_size fixture
#: ART's expected repr fragments for its PyTorch fixture (test_deeplearning_common.json, "test_repr_pytorch"),
#: the class-name fragment aside (a FlatPyTorchClassifier names its own class, by ART's own pattern)
REPR_FRAGMENTS = [
    "(conv): Conv2d(1, 1, kernel_size=(7, 7), stride=(1, 1))",
    "(pool): MaxPool2d(kernel_size=4, stride=4, padding=0, dilation=1, ceil_mode=False)",
    "(fullyconnected): Linear(in_features=25, out_features=10, bias=True)",
    "loss=CrossEntropyLoss(), optimizer=Adam",
    "input_shape=(1, 28, 28), nb_classes=10",
    "clip_values=array([0., 1.], dtype=float32",
    "preprocessing_defences=None, postprocessing_defences=None, preprocessing=StandardisationMeanStdPyTorch(mean=0.0, "
    "std=1.0, apply_fit=True, apply_predict=True, device=cpu)",
]


class Model(nn.Module):
    """ART's PyTorch test model (tests/utils.py, get_image_classifier_pt), with seeded weights."""

    def __init__(self, from_logits: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels=1, out_channels=1, kernel_size=7)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(4, 4)
        self.fullyconnected = nn.Linear(25, 10)
        self.from_logits = from_logits

    def forward(self, x):
        x = self.pool(self.relu(self.conv(x))).reshape(-1, 25)
        x = self.fullyconnected(x)
        return x if self.from_logits else torch.softmax(x, dim=1)


def pair(seed: int = 0, *, from_logits: bool = True, loss=None, **flat_params):
    """(ART's PyTorchClassifier, FlatPyTorchClassifier) over identical copies of the fixture model."""
    torch.manual_seed(seed)
    model = Model(from_logits)
    twin = copy.deepcopy(model)
    loss = loss or nn.CrossEntropyLoss(reduction="sum")
    common = dict(input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1), device_type="cpu")
    control = PyTorchClassifier(model=model, loss=loss, optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                                **common)
    flat = fa.FlatPyTorchClassifier(model=twin, loss=copy.deepcopy(loss),
                                    optimizer=torch.optim.Adam(twin.parameters(), lr=0.01), **common, **flat_params)
    return control, flat


@pytest.fixture(scope="module")
def mnist():
    """ART's default MNIST subset sizes: 1,000 training and 100 test images, one-hot labels as ART's loader gives."""
    xtr, ytr, xte, yte = mnist_split(str(shared_path("data", "mnist")))
    onehot = np.eye(10, dtype=np.float32)
    return (xtr[:1000], onehot[ytr[:1000]]), (xte[:100], onehot[yte[:100]])


def accuracy(clf, x, y) -> float:
    return float(np.mean(np.argmax(clf.predict(x), axis=1) == np.argmax(y, axis=1)))


def test_fit(mnist):
    """ART's test_fit: accuracy before and after two epochs; the null flat fit equals the control's exactly."""
    (x_train, y_train), (x_test, y_test) = mnist
    control, flat = pair(1, rho=0.0)
    before = accuracy(control, x_test, y_test)
    assert accuracy(flat, x_test, y_test) == before
    torch.manual_seed(0)
    control.fit(x_train, y_train, batch_size=BATCH, nb_epochs=2)
    torch.manual_seed(0)
    flat.fit(x_train, y_train, batch_size=BATCH, nb_epochs=2)
    assert accuracy(control, x_test, y_test) > before + 0.3
    np.testing.assert_allclose(flat.predict(x_test), control.predict(x_test), rtol=1e-4, atol=1e-4)


def test_fit_kwargs(mnist):
    """ART's test_fit_kwargs: fit and fit_generator accept (and ignore) framework keywords such as callbacks."""
    (x_train, y_train), _ = mnist
    _, flat = pair(2)
    kwargs = {"callbacks": ["a Keras callback, meaningless for PyTorch"]}
    flat.fit(x_train, y_train, batch_size=BATCH, nb_epochs=1, verbose=True, **kwargs)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x_train),
                                                                        torch.from_numpy(y_train)), batch_size=BATCH)
    flat.fit_generator(generator=PyTorchDataGenerator(loader, size=x_train.shape[0], batch_size=BATCH), nb_epochs=1,
                       **kwargs)
    assert len(flat.history) == 1


def test_fit_image_generator(mnist):
    """ART's test_fit_image_generator: a PyTorchDataGenerator, two epochs; the null flat fit equals the control's."""
    (x_train, y_train), (x_test, y_test) = mnist
    control, flat = pair(3, rho=0.0)

    def generator():
        data = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
        return PyTorchDataGenerator(torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True),
                                    size=x_train.shape[0], batch_size=BATCH)

    before = accuracy(control, x_test, y_test)
    torch.manual_seed(4)
    control.fit_generator(generator(), nb_epochs=2)
    torch.manual_seed(4)
    flat.fit_generator(generator(), nb_epochs=2)
    assert flat.model.training and control.model.training  # where ART's fit_generator leaves the network
    assert accuracy(control, x_test, y_test) > before + 0.3
    np.testing.assert_allclose(flat.predict(x_test), control.predict(x_test), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("from_logits", [True, False])
def test_predict_shapes_and_gradients(mnist, from_logits):
    """ART's test_predict, test_shapes, test_loss_gradient, test_class_gradient: equal to the control's."""
    _, (x_test, y_test) = mnist
    control, flat = pair(4, from_logits=from_logits)
    np.testing.assert_array_equal(flat.predict(x_test[0:1]), control.predict(x_test[0:1]))
    predictions = flat.predict(x_test)
    assert predictions.shape == y_test.shape and flat.nb_classes == 10
    class_gradients = flat.class_gradient(x_test[:11])
    assert class_gradients.shape == tuple([11, 10] + list(x_test[1].shape))
    np.testing.assert_array_equal(class_gradients, control.class_gradient(x_test[:11]))
    for label in (5, np.arange(11) % 10):
        np.testing.assert_array_equal(flat.class_gradient(x_test[:11], label=label),
                                      control.class_gradient(x_test[:11], label=label))
    loss_gradients = flat.loss_gradient(x_test[:11], y_test[:11])
    assert loss_gradients.shape == x_test[:11].shape
    np.testing.assert_array_equal(loss_gradients, control.loss_gradient(x_test[:11], y_test[:11]))
    assert np.abs(loss_gradients).sum() > 0


def test_compute_loss(mnist):
    """ART's test_compute_loss (reduction='sum'): equal to the control's, and to the summed cross-entropy itself."""
    _, (x_test, y_test) = mnist
    control, flat = pair(5)
    computed = float(flat.compute_loss(x=x_test, y=y_test, reduction="sum"))
    assert computed == pytest.approx(float(control.compute_loss(x=x_test, y=y_test, reduction="sum")), rel=1e-6)
    with torch.no_grad():
        logits = flat.model(torch.from_numpy(x_test))
    assert computed == pytest.approx(float(nn.functional.cross_entropy(logits, torch.from_numpy(y_test.argmax(1)),
                                                                       reduction="sum")), rel=1e-5)


def test_defences_predict(mnist):
    """ART's test_defences_predict: a defended flat classifier predicts what the undefended one predicts on defended data.

    FeatureSqueezing is left out: in ART 1.20 it returns float64, which ART's own PyTorchClassifier.predict
    cannot feed to a float32 network (the control fails the same way).
    """
    _, (x_test, y_test) = mnist
    _, flat = pair(6, rho=0.02)
    clean = flat.predict(x_test)
    for defence in (JpegCompression(clip_values=(0, 1), apply_predict=True, channels_first=True), SpatialSmoothing()):
        _, defended = pair(6, rho=0.02)
        defended.set_params(preprocessing_defences=[defence])
        assert len(defended.preprocessing_defences) == 1 and defended.flat_method.rho == 0.02
        x_defended, _ = defence(x_test, y_test)
        expected = flat.predict(x_defended.astype(np.float32))
        np.testing.assert_array_almost_equal(defended.predict(x_test), expected, decimal=4)
        assert not np.array_equal(expected, clean)


def test_pickle_and_state(mnist, tmp_path, monkeypatch):
    """ART's test_pickle (both files) and test_tensorflow_1_state: same keys, predictions and method after a round trip."""
    from art import config

    monkeypatch.setattr(config, "ART_DATA_PATH", str(tmp_path))
    (x_train, y_train), (x_test, y_test) = mnist
    control, flat = pair(7, method="asam", rho=0.3)
    flat.fit(x_train[:200], y_train[:200], batch_size=100, nb_epochs=1)
    path = os.path.join(tmp_path, "my_classifier")
    with open(path, "wb") as f:
        pickle.dump(flat, f)
    with open(path, "rb") as f:
        loaded = pickle.load(f)
    np.testing.assert_equal(flat._clip_values, loaded._clip_values)
    assert flat._channels_first == loaded._channels_first
    assert set(flat.__dict__) == set(loaded.__dict__)
    assert loaded.flat_method.name == "asam" and loaded.flat_method.rho == 0.3
    assert accuracy(loaded, x_test, y_test) == accuracy(flat, x_test, y_test)
    state = flat.__getstate__()
    assert isinstance(state, dict)
    flat.__setstate__(state=state)
    assert set(control.__getstate__()) <= set(state)


def test_save(mnist, tmp_path):
    """ART's test_save_2: fit, then save writes the model (and optimizer) files."""
    (x_train, y_train), _ = mnist
    _, flat = pair(8)
    flat.fit(x_train[:200], y_train[:200], batch_size=128, nb_epochs=2)
    folder = tmp_path / "sub"
    folder.mkdir()
    assert not os.listdir(folder)
    flat.save("modelFile", path=str(folder))
    assert sorted(os.listdir(folder)) == ["modelFile.model", "modelFile.optimizer"]


def test_clone_for_refitting():
    """ART's test_clone_for_refitting on its functional (Sequential) classifier."""
    net = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(4, 10, 5), nn.ReLU(),
                        nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(4 * 4 * 10, 100), nn.Linear(100, 10))
    flat = fa.FlatPyTorchClassifier(model=net, clip_values=(0, 1), loss=nn.CrossEntropyLoss(),
                                    optimizer=torch.optim.Adam(net.parameters(), lr=0.01), input_shape=(1, 28, 28),
                                    nb_classes=10, method="fam", lam=0.02)
    clone = flat.clone_for_refitting()
    assert type(clone) is fa.FlatPyTorchClassifier and clone.flat_method.lam == 0.02
    assert type(clone.optimizer) is torch.optim.Adam and clone.model is not flat.model


def test_repr_nb_classes_input_shape():
    """ART's test_repr (its expected fragments), test_nb_classes, test_input_shape; the flat method closes the repr."""
    torch.manual_seed(0)
    model = Model()
    flat = fa.FlatPyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                    optimizer=torch.optim.Adam(model.parameters(), lr=0.01), clip_values=(0, 1),
                                    device_type="cpu", method="sam", rho=0.05)
    text = repr(flat)
    assert text.startswith("flatplug_art.estimator.FlatPyTorchClassifier(model=")  # ART's module.Class(...) pattern
    for fragment in REPR_FRAGMENTS:
        assert fragment in text, fragment
    assert text.endswith(", method='sam', rho=0.05)")
    assert flat.nb_classes == 10 and flat.input_shape == (1, 28, 28)
