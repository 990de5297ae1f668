"""ART-style flatness metrics: equal to the core measures on an independently normalised model, and to ART's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("art")

from art.metrics import loss_sensitivity  # noqa: E402
from art_support import MEAN, STD, classifier, mnist_split, one_thread, tiny_cnn  # noqa: E402,F401
from conftest import shared_path  # noqa: E402

import flatplug as fp  # noqa: E402
from flatplug import measures  # noqa: E402
from flatplug_art import metrics  # noqa: E402


class Normalised(nn.Module):
    """The reference: ``net((x - MEAN) / STD)``, written independently of the adapter."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - MEAN) / STD)


@pytest.fixture(scope="module")
def data():
    xtr, ytr, _, _ = mnist_split(str(shared_path("data", "mnist")))
    return xtr[:64], ytr[:64]


@pytest.fixture(scope="module")
def trained(data):
    x, y = data
    clf = classifier(0)
    clf.fit(x, y, batch_size=32, nb_epochs=2)  # away from the random init, so curvature is not trivial
    return clf


CASES = {
    "relative_flatness": {},
    "hessian_eigenvalues": {"k": 2, "max_iter": 30},
    "hessian_trace": {"probes": 8, "min_probes": 8},
    "sharpness": {"rho": 0.05, "steps": 3},
    "local_flatness": {"eps": 0.1, "steps": 3},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_metric_equals_core_measure_on_normalised_model(data, trained, name):
    x, y = data
    params = CASES[name]
    got = getattr(metrics, name)(trained, x, y, batch_size=32, return_measurement=True, **params)
    ref_model = Normalised(trained.model)
    batches = [(torch.from_numpy(x[i:i + 32]), torch.from_numpy(y[i:i + 32])) for i in range(0, len(x), 32)]
    want = getattr(measures, name)(ref_model, batches, quiet=True, **params)
    assert got.value == pytest.approx(want.value, rel=1e-5)
    assert isinstance(getattr(metrics, name)(trained, x, np.eye(10)[y], **params), float)  # ART style: a float
    registered = fp.measure(f"art.{name}", trained, (x, y), batch_size=32, **params)
    assert registered.value == pytest.approx(want.value, rel=1e-5)


def test_layer_and_params_named_as_in_the_network(data, trained):
    x, y = data
    assert metrics.relative_flatness(trained, x, y, layer="5") == pytest.approx(metrics.relative_flatness(trained, x, y))
    got = metrics.hessian_trace(trained, x, y, params=["5.weight"], probes=8, min_probes=8)
    want = measures.hessian_trace(Normalised(trained.model), [(torch.from_numpy(x), torch.from_numpy(y))],
                                  params=["net.5.weight"], probes=8, min_probes=8, quiet=True).value
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_local_flatness_at_eps_0_is_arts_loss_sensitivity(data, scale):
    """At eps = 0 with q = 2, LF is the mean ||grad_x l||_2 in the classifier's units: ART's loss_sensitivity
    (which differentiates the batch-mean loss, hence the factor N)."""
    x, y = data
    clf = classifier(1, clip=(0.0, scale), preprocessing=(MEAN * scale, STD * scale))
    lf = metrics.local_flatness(clf, x * scale, y, eps=0.0, q=2)
    art = loss_sensitivity(clf, x * scale, np.eye(10, dtype=np.float32)[y]) * len(x)
    assert lf == pytest.approx(float(art), rel=1e-4)


def test_local_flatness_eps_is_in_the_classifiers_units(data):
    x, y = data
    unit = metrics.local_flatness(classifier(1), x, y, eps=0.1, steps=3)
    byte = classifier(1, clip=(0.0, 255.0), preprocessing=(MEAN * 255, STD * 255))
    m = metrics.local_flatness(byte, x * 255, y, eps=25.5, steps=3, return_measurement=True)
    assert m.value == pytest.approx(unit / 255, rel=1e-4)
    assert m.details["eps"] == pytest.approx(25.5)


def test_classifier_left_as_found(data, trained):
    x, y = data
    net = trained.model
    net.train()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = [p.detach().clone() for p in net.parameters()]
    for name, params in CASES.items():
        getattr(metrics, name)(trained, x, y, **params)
    assert net.training and all(m.training for m in net.modules())
    for p, w in zip(net.parameters(), before):
        assert torch.equal(p.detach(), w) and torch.equal(p.grad, torch.full_like(p, 0.5)) and p.requires_grad
    net.eval()
    for p in net.parameters():
        p.grad = None


def test_bad_input(data):
    x, y = data
    with pytest.raises(TypeError, match="expected an ART PyTorchClassifier"):
        metrics.hessian_trace(tiny_cnn(), x, y)
    with pytest.raises(ValueError, match="no clip_values"):
        metrics.local_flatness(classifier(0, clip=None), x, y, eps=0.1)
    with pytest.raises(ValueError, match="eps: expected a non-negative"):
        metrics.local_flatness(classifier(0), x, y, eps=-0.1)
    with pytest.raises(ValueError, match="outside the classifier's clip_values"):
        metrics.relative_flatness(classifier(0), x * 2, y)
    with pytest.raises(ValueError, match="3 labels for 64 inputs"):
        metrics.sharpness(classifier(0), x, y[:3], rho=0.05)
    with pytest.raises(TypeError, match="data must be a pair"):
        fp.measure("art.relative_flatness", classifier(0), x)
