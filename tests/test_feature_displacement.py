"""feature_displacement on a real CIFAR-10 model and real images: per-sample quantities recomputed
independently, and Walter et al.'s "local, not global" and "confidently wrong in flat regions"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import flatplug as fp
from flatplug.attacks import pgd
from flatplug.measures import feature_displacement, relative_flatness

from conftest import kappa_reference, shared_path


@pytest.fixture(scope="module")
def cifar():
    from flatplug.sources import ZooSource, load_imagefolder

    model = ZooSource(shared_path("models", "zoo.json")).load("marabou_medium").module.eval()
    x, y = load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=100, seed=0)
    return model, x, y


def features(model, x):
    """The input of the model's last Linear and the logits, by a hook written here."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    box = []
    handle = last.register_forward_hook(lambda mod, inp, out: box.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return box[0], logits


def test_per_sample_values_and_large_attacks_end_confidently_wrong_in_flat_regions(cifar):
    """At eps = 16/255 (L-inf PGD, 10 steps) every per-sample quantity equals its recomputation from the
    core PGD's examples; the attacked images are wrong with median confidence above 0.9 (measured
    0.998) and their relative flatness has collapsed (median 2.0 against 39.7 clean): flat, because
    confidently wrong (Walter et al. 2025). Their features moved by more than their own norm (1.5)."""
    model, x, y = cifar
    eps = 16 / 255
    m = feature_displacement(model, (x, y), eps=eps, quiet=True)
    per = m.artifacts["per_sample"]
    x_adv = pgd(model, x, y, eps=eps, steps=10, seed=0)
    phi, z = (t.double() for t in features(model, x))  # the model's float32 features, in float64
    phi_adv, z_adv = (t.double() for t in features(model, x_adv))
    disp = (phi_adv - phi).norm(dim=1) / phi.norm(dim=1)
    assert torch.allclose(per["displacement"], disp, rtol=1e-5, atol=1e-6)
    assert m.value == pytest.approx(float(np.median(disp.numpy())), rel=1e-5)  # 100 images: the mean of two
    change = F.cross_entropy(z_adv, y, reduction="none") - F.cross_entropy(z, y, reduction="none")
    assert torch.allclose(per["loss_change"], change, rtol=1e-5, atol=1e-5)
    assert torch.allclose(per["confidence"], z_adv.softmax(1).max(1).values, atol=1e-6)
    assert torch.equal(per["correct_adv"], z_adv.argmax(1) == y)
    kappa_adv = relative_flatness(model, (x_adv, y), quiet=True).per_sample
    assert torch.allclose(per["kappa_adv"], kappa_adv.double(), rtol=1e-4, atol=0.0)  # float32 vs float64
    # confidently wrong: tiny values, right in float32 too (a float64 reference without cancellation;
    # contracting diag(p) - p p^T with W W^T in float32 left them up to 1e-4 off in absolute terms)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    for got, feats in ((per["kappa_adv"], phi_adv), (per["kappa_clean"], phi)):
        ref = kappa_reference(feats, last.weight.detach(), last.bias.detach())
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=0.0)
    d = m.details
    assert d["robust_accuracy"] == 0.0 and d["wrong_adv"] == 100
    assert d["median_confidence_wrong"] > 0.9
    assert d["confident_wrong"] >= 70  # measured 89 of 100
    assert d["median_kappa_adv"] < 0.25 * d["median_kappa_clean"]
    assert d["median_displacement"] > 1.0
    assert d["median_taylor_relative_error"] > 0.2  # measured 0.47: the quadratic model no longer holds


def test_small_attacks_stay_local_where_the_second_order_prediction_holds(cifar):
    """At eps = 0.25/255 the features move by ~4% of their norm and the second-order Taylor prediction
    in feature space, g^T dz + dz^T G dz / 2, matches the loss change to a median 0.25% (measured): the
    local regime in which flatness controls the loss. Each Taylor value is recomputed here."""
    model, x, y = cifar
    eps = 0.25 / 255
    m = feature_displacement(model, (x, y), eps=eps, quiet=True)
    per = m.artifacts["per_sample"]
    assert m.details["median_displacement"] < 0.1
    assert m.details["median_taylor_relative_error"] < 0.02
    x_adv = pgd(model, x, y, eps=eps, steps=10, seed=0)
    _, z = features(model, x)
    _, z_adv = features(model, x_adv)
    p = z.double().softmax(1)
    dz = (z_adv - z).double()  # the last layer is linear: dz = W (phi' - phi)
    g = p - F.one_hot(y, 10).double()
    second = (p * dz.pow(2)).sum(1) - (p * dz).sum(1).pow(2)  # dz^T (diag p - p p^T) dz
    assert torch.allclose(per["taylor"].double(), (g * dz).sum(1) + 0.5 * second, rtol=1e-3, atol=1e-6)
    assert bool((per["flatness_term"] >= 0.5 * second.float() * (1 - 1e-4) - 1e-7).all())  # kappa bounds it


def test_registered_follows_the_attack_and_takes_any_attack(cifar):
    model, x, y = cifar
    info = fp.plugins.info("measures", "feature_displacement")
    assert info.follows_attack == ("eps", "norm") and "2510.14231" in info.paper
    calls = []

    def noise(xb, yb):
        calls.append(1)
        return (xb + 0.01).clamp(0, 1)

    m = feature_displacement(model, (x[:10], y[:10]), eps=0.01, attack=noise, quiet=True)
    assert calls and m.details["attack"] == "noise"
    with pytest.raises(ValueError, match="confident"):
        feature_displacement(model, (x[:4], y[:4]), eps=0.01, confident=1.5, quiet=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        feature_displacement(model, (x[:4] * 255, y[:4]), eps=0.01, quiet=True)


def test_zero_features_that_move_have_no_flatness_bound():
    """Real MNIST digits through a network whose penultimate features are ReLU(mean(x) - 0.5): zero for
    every clean digit (mean intensity about 0.13) and positive once an "attack" brightens the image. The
    relative displacement of a zero feature vector that moved is infinite, and so is the flatness term
    (kappa(x) = 0 there: 0.5 * inf * 0 came out nan and was reported as 0, a bound the loss change broke)."""
    from flatplug.sources import load_mnist

    data = load_mnist(shared_path("data", "mnist"), n=8)
    x, y = data.x.double(), data.y
    torch.manual_seed(0)
    first = torch.nn.Linear(28 * 28, 3).double()
    with torch.no_grad():
        first.weight.fill_(1.0 / (28 * 28))
        first.bias.fill_(-0.5)
    model = torch.nn.Sequential(torch.nn.Flatten(), first, torch.nn.ReLU(), torch.nn.Linear(3, 10).double()).eval()
    brighten = lambda xx, yy: (xx + 0.6).clamp(0, 1)  # noqa: E731
    m = feature_displacement(model, (x, y), eps=0.6, attack=brighten, quiet=True)
    per = m.artifacts["per_sample"]
    with torch.no_grad():
        assert float(model[:3](x).abs().max()) == 0.0 and bool((model[:3](brighten(x, y)) > 0).all())
    assert bool(torch.isinf(per["displacement"]).all())
    assert bool(torch.isinf(per["flatness_term"]).all())
    assert bool((per["kappa_clean"] == 0).all())
