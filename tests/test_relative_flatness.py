"""relative_flatness against the full autograd Hessian of the whole model, and its invariances."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flatplug.measures import relative_flatness
from conftest import dense_hessian, kappa_reference, tiny_batch


def make_net(d_in=6, hidden=5, classes=4, *, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, 7, bias=bias), nn.ReLU(), nn.Linear(7, hidden, bias=bias), nn.Tanh(),
        nn.Linear(hidden, classes, bias=bias),
    ).double()


def reference(net, x, y, variant):
    """kappa from the dense Hessian of the whole network's loss w.r.t. the last weight matrix."""
    w = net[4].weight.detach()
    k, d = w.shape
    h = dense_hessian(net, x, y, ["4.weight"]).reshape(k, d, k, d)
    traces = torch.einsum("sjtj->st", h)
    if variant == "pairwise":
        return float((w @ w.T * traces).sum())
    return float(w.pow(2).sum() * traces.trace())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("variant", ["pairwise", "trace"])
def test_closed_form_equals_dense_hessian(bias, variant):
    net = make_net(bias=bias, seed=3)
    x, y = tiny_batch(40, 6, 4, seed=5)
    expected = reference(net, x, y, variant)
    closed = relative_flatness(net, (x, y), variant=variant)
    exact = relative_flatness(net, (x, y), variant=variant, exact=True)
    assert closed.value == pytest.approx(expected, rel=1e-6)
    assert exact.value == pytest.approx(expected, rel=1e-6)
    assert closed.per_sample.shape == (40,)
    assert float(closed.per_sample.mean()) == pytest.approx(closed.value, rel=1e-12)


def test_per_sample_equals_single_sample_hessians():
    net = make_net(seed=1)
    x, y = tiny_batch(5, 6, 4, seed=2)
    per = relative_flatness(net, (x, y)).per_sample
    for i in range(5):
        assert float(per[i]) == pytest.approx(reference(net, x[i : i + 1], y[i : i + 1], "pairwise"), rel=1e-6)


def test_batches_equal_one_batch():
    net = make_net(seed=4)
    x, y = tiny_batch(30, 6, 4, seed=6)
    whole = relative_flatness(net, (x, y)).value
    split = relative_flatness(net, [(x[:7], y[:7]), (x[7:20], y[7:20]), (x[20:], y[20:])]).value
    assert split == pytest.approx(whole, rel=1e-12)


def scaled(net, a):
    """phi -> a phi, W -> W / a, with the same function (tanh features replaced by a linear layer scale)."""
    features = nn.Sequential(*list(net)[:4])
    head = net[4]
    new_head = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None).double()
    with torch.no_grad():
        new_head.weight.copy_(head.weight / a)
        if head.bias is not None:
            new_head.bias.copy_(head.bias)
    return nn.Sequential(features, Scale(a), new_head)


class Scale(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x):
        return x * self.a


@settings(max_examples=15, deadline=None)
@given(a=st.floats(0.01, 100.0), variant=st.sampled_from(["pairwise", "trace"]), seed=st.integers(0, 50))
def test_invariant_to_reparametrisation(a, variant, seed):
    net = make_net(seed=seed)
    x, y = tiny_batch(12, 6, 4, seed=seed + 1)
    base = relative_flatness(net, (x, y), variant=variant).value
    assert relative_flatness(scaled(net, a), (x, y), variant=variant).value == pytest.approx(base, rel=1e-9)


@pytest.mark.parametrize("variant", ["pairwise", "trace"])
def test_invariant_to_orthogonal_feature_basis(variant):
    net = make_net(seed=7)
    x, y = tiny_batch(20, 6, 4, seed=8)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    rotate = nn.Linear(5, 5, bias=False).double()
    head = nn.Linear(5, 4).double()
    with torch.no_grad():
        rotate.weight.copy_(q)
        head.weight.copy_(net[4].weight @ q.T)
        head.bias.copy_(net[4].bias)
    rotated = nn.Sequential(*list(net)[:4], rotate, head)
    assert torch.allclose(rotated(x), net(x))
    base = relative_flatness(net, (x, y), variant=variant).value
    assert relative_flatness(rotated, (x, y), variant=variant).value == pytest.approx(base, rel=1e-9)


def test_normalize_features_invariant_to_per_feature_scaling():
    net = make_net(seed=9)
    x, y = tiny_batch(25, 6, 4, seed=10)
    d = torch.tensor([0.1, 3.0, 1.0, 20.0, 0.5], dtype=torch.float64)
    features = nn.Sequential(*list(net)[:4])
    head = nn.Linear(5, 4).double()
    with torch.no_grad():
        head.weight.copy_(net[4].weight / d)
        head.bias.copy_(net[4].bias)
    rescaled = nn.Sequential(features, ScaleVec(d), head)
    assert torch.allclose(rescaled(x), net(x))
    plain = relative_flatness(net, (x, y)).value
    # without normalisation per-feature rescaling changes the value; with it, it does not
    assert relative_flatness(rescaled, (x, y)).value != pytest.approx(plain, rel=1e-3)
    norm_a = relative_flatness(net, (x, y), normalize_features=True).value
    norm_b = relative_flatness(rescaled, (x, y), normalize_features=True).value
    assert norm_b == pytest.approx(norm_a, rel=1e-9)


class ScaleVec(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.register_buffer("d", d)

    def forward(self, x):
        return x * self.d


def test_layer_by_name_and_module():
    net = make_net(seed=2)
    x, y = tiny_batch(10, 6, 4)
    a = relative_flatness(net, (x, y)).value
    assert relative_flatness(net, (x, y), layer="4").value == a
    assert relative_flatness(net, (x, y), layer=net[4]).value == a
    assert relative_flatness(net, (x, y)).details["layer"] == "4"


def test_bad_layers():
    net = make_net()
    x, y = tiny_batch(10, 6, 4)
    with pytest.raises(TypeError, match="nn.Linear"):
        relative_flatness(net, (x, y), layer="1")
    with pytest.raises(ValueError, match="did you mean '4'"):
        relative_flatness(net, (x, y), layer="44")
    with pytest.raises(ValueError, match="not the model's logits"):
        relative_flatness(net, (x, y), layer="2")
    with pytest.raises(ValueError, match="variant"):
        relative_flatness(net, (x, y), variant="diag")
    with pytest.raises(ValueError, match="no nn.Linear"):
        relative_flatness(nn.Sequential(nn.Flatten()), (x, y))


# -- any loss: Hessian-vector products on the penultimate weights ---------------------------------


def brier(logits, y):
    """The Brier score sum_k (p_k - [k = y])^2: twice differentiable, not convex in the logits."""
    p = torch.softmax(logits, 1)
    return (p - torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)).pow(2).sum(1)


def mnist_model_and_images(n):
    """A real MNIST classifier from ../shared's zoo (100 features enter its last Linear) in float64,
    with n real MNIST test images."""
    from conftest import shared_path
    from flatplug.sources import ZooSource, load_mnist

    model = ZooSource(shared_path("models", "zoo.json")).load("eran_mnist_conv_small_nat").module.double().eval()
    data = load_mnist(shared_path("data", "mnist"), n=n)
    return model, data.x.double(), data.y


def dense_kappa(model, x, y, loss_fn, variant):
    """kappa from the dense autograd Hessian of the whole network's mean loss w.r.t. its last weight matrix."""
    from torch.func import functional_call

    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1] + ".weight"
    w = dict(model.named_parameters())[name].detach()
    k, d = w.shape

    def loss_of(flat):
        return loss_fn(functional_call(model, {name: flat.reshape(k, d)}, (x,)), y).mean()

    h = torch.autograd.functional.hessian(loss_of, w.reshape(-1), vectorize=True).reshape(k, d, k, d)
    traces = torch.einsum("sjtj->st", h)
    if variant == "pairwise":
        return float((w @ w.T * traces).sum())
    return float(w.pow(2).sum() * traces.trace())


@pytest.mark.parametrize("variant", ["pairwise", "trace"])
def test_hvp_path_equals_closed_form_on_cross_entropy(variant):
    """On a real MNIST model and 200 real images, the Hessian-vector-product path (taken for any loss_fn
    that is not the built-in cross-entropy) gives the closed form's per-sample values. Guards against
    a wrong probe (traces of the wrong blocks), a transposed weight-weight product, and chunking bugs."""
    model, x, y = mnist_model_and_images(200)
    closed = relative_flatness(model, (x, y), variant=variant, quiet=True)
    hvp = relative_flatness(model, (x, y), variant=variant, quiet=True,
                            loss_fn=lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none"))
    assert closed.details["method"] == "closed_form" and hvp.details["method"] == "hessian_vector_products"
    # float64 rounding: the closed form cancels terms of size ||phi||^2 max_k ||w_k||^2 (~1e3 here);
    # measured max |difference| 5e-12 over values from 1e-5 to 5e3
    assert torch.allclose(hvp.per_sample, closed.per_sample, rtol=1e-9, atol=1e-10)
    assert hvp.value == pytest.approx(closed.value, rel=1e-10)


@pytest.mark.parametrize("variant", ["pairwise", "trace"])
def test_non_cross_entropy_loss_matches_dense_hessian(variant):
    """The Brier score on a real MNIST model and 40 real images: kappa equals the one built from the
    dense Hessian of the whole network's loss w.r.t. its last weight matrix (1,000 x 1,000), and each
    sample's value equals its own single-sample dense computation. The closed form (cross-entropy's)
    differs, so the test tells the losses apart."""
    model, x, y = mnist_model_and_images(40)
    m = relative_flatness(model, (x, y), variant=variant, loss_fn=brier, quiet=True)
    assert m.value == pytest.approx(dense_kappa(model, x, y, brier, variant), rel=1e-8)
    for i in (0, 17):
        ref = dense_kappa(model, x[i:i + 1], y[i:i + 1], brier, variant)
        assert float(m.per_sample[i]) == pytest.approx(ref, rel=1e-8, abs=1e-14)
    exact = relative_flatness(model, (x, y), variant=variant, loss_fn=brier, exact=True, quiet=True)
    assert exact.value == pytest.approx(m.value, rel=1e-8)
    assert abs(relative_flatness(model, (x, y), variant=variant, quiet=True).value - m.value) > 0.1 * abs(m.value)


def test_trace_variant_bounds_pairwise_for_cross_entropy():
    """||W||_F^2 Tr(H) >= kappa_Tr per sample when the Hessian w.r.t. the logits is positive semi-definite
    (cross-entropy), since Tr(W W^T G) <= Tr(W W^T) Tr(G); on real data the bound is far from tight."""
    model, x, y = mnist_model_and_images(100)
    pair = relative_flatness(model, (x, y), quiet=True).per_sample
    trace = relative_flatness(model, (x, y), variant="trace", quiet=True).per_sample
    assert bool((trace >= pair * (1 - 1e-12)).all())
    assert float(trace.sum()) > 2 * float(pair.sum())


def test_bad_loss_fn():
    net = make_net()
    x, y = tiny_batch(10, 6, 4)
    with pytest.raises(TypeError, match="loss_fn"):
        relative_flatness(net, (x, y), loss_fn="mse")
    with pytest.raises(ValueError, match="per-sample"):
        relative_flatness(net, (x, y), loss_fn=lambda z, t: torch.nn.functional.cross_entropy(z, t))


# -- float32 rounding on confident predictions ------------------------------------------------------


@pytest.mark.parametrize("name", ["eran_mnist_6x100_nat", "eran_mnist_conv_small_nat"])
def test_float32_per_sample_values_of_confident_predictions(name):
    """A real float32 MNIST model on 1,000 real images: every per-sample value equals a float64 reference
    computed without cancellation, ``||phi||^2 sum_k p_k ||w_k - sum_l p_l w_l||^2`` (pairwise) and
    ``||W||^2 ||phi||^2 sum_k p_k sum_{l != k} p_l`` (trace). Most of these predictions are confident:
    the difference ``sum_k p_k ||w_k||^2 - ||sum_k p_k w_k||^2`` came out 0 or more than 1% off for 771
    of the 1,000 images on eran_mnist_6x100_nat (median 0.0 against 4.2e-6). Measured now: at most
    1.6e-5 relative (float32 features and logits)."""
    from conftest import shared_path
    from flatplug.features import features_and_logits, find_layer
    from flatplug.sources import ZooSource, load_mnist

    zoo = ZooSource(shared_path("models", "zoo.json"))
    data = load_mnist(shared_path("data", "mnist"), n=1000)
    model64 = zoo.load(name).module.double().eval()
    _, linear = find_layer(model64, None)
    phi, logits, _ = features_and_logits(model64, (data.x.double(), data.y), linear, quiet=True)
    w = linear.weight.detach()
    p = torch.softmax(logits, 1)
    classes = p.shape[1]
    others = torch.stack([p[:, [j for j in range(classes) if j != k]].sum(1) for k in range(classes)], 1)
    expected = {"pairwise": kappa_reference(phi, w, linear.bias.detach()),
                "trace": w.pow(2).sum() * phi.pow(2).sum(1) * (p * others).sum(1)}
    model32 = zoo.load(name).module.float().eval()
    for variant, ref in expected.items():
        got = relative_flatness(model32, (data.x.float(), data.y), variant=variant, quiet=True).per_sample
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=0.0)
    if name == "eran_mnist_6x100_nat":  # mostly confident predictions: the case that cancelled
        assert float(expected["pairwise"].median()) < 1e-4 * float(expected["pairwise"].mean())


def test_normalize_features_drops_dead_features_and_scales_constant_ones():
    """A feature that is zero on all the data (a dead ReLU) changes nothing the network computes, so its
    weight column must not count: kappa equals the dense-Hessian kappa of the network with that feature
    removed, and scaling the dead column by 10 (the same function) leaves it unchanged. A feature that
    is constant (non-zero) on the data is scaled by its value: multiplying it by 4 and its column by 1/4
    (the same function) leaves kappa unchanged too."""
    torch.manual_seed(4)
    x, y = tiny_batch(30, 6, 4, seed=2)
    body = nn.Sequential(nn.Linear(6, 5), nn.Tanh()).double()

    class Features(nn.Module):  # 5 live features, one dead, one constant
        def __init__(self, scale_const=1.0):
            super().__init__()
            self.body, self.scale_const = body, scale_const

        def forward(self, x):
            h = self.body(x)
            zero = torch.zeros_like(h[:, :1])
            return torch.cat([h[:, :2], zero, h[:, 2:], zero + 0.7 * self.scale_const], 1)

    head = nn.Linear(7, 4).double()
    net = nn.Sequential(Features(), head)
    base = relative_flatness(net, (x, y), normalize_features=True).value
    # the reference: drop the dead feature, divide the others by their scales (std; |0.7| for the constant)
    with torch.no_grad():
        phi = Features()(x)
        keep = [0, 1, 3, 4, 5, 6]
        kept = phi[:, keep]
        scale = kept.std(0, unbiased=False)
        scale[-1] = 0.7
        ref_head = nn.Linear(6, 4).double()
        ref_head.weight.copy_(head.weight[:, keep] * scale)
        ref_head.bias.copy_(head.bias)
    ref_net = nn.Sequential(nn.Identity(), ref_head)
    ref_x = kept / scale
    w = ref_head.weight.detach()
    h = dense_hessian(ref_net, ref_x, y, ["1.weight"]).reshape(4, 6, 4, 6)
    assert base == pytest.approx(float((w @ w.T * torch.einsum("sjtj->st", h)).sum()), rel=1e-9)
    scaled_head = nn.Linear(7, 4).double()
    with torch.no_grad():
        scaled_head.weight.copy_(head.weight)
        scaled_head.weight[:, 2] *= 10.0  # the dead column
        scaled_head.weight[:, 6] /= 4.0  # the constant column, its feature times 4
        scaled_head.bias.copy_(head.bias)
    same = nn.Sequential(Features(scale_const=4.0), scaled_head)
    assert torch.allclose(same(x), net(x))
    assert relative_flatness(same, (x, y), normalize_features=True).value == pytest.approx(base, rel=1e-9)


@pytest.mark.parametrize("loss", ["cross_entropy", "brier"])
@pytest.mark.parametrize("exact", [False, True])
def test_mean_hessian_trace_detail_is_the_hessian_trace_of_the_loss(loss, exact):
    """``details["mean_hessian_trace"]`` is Tr(H) of the mean loss w.r.t. the last weight matrix, for the
    loss measured (it used cross-entropy's formula for every loss): the trace of the dense Hessian."""
    net = make_net(seed=6)
    x, y = tiny_batch(20, 6, 4, seed=8)
    loss_fn = None if loss == "cross_entropy" else brier
    m = relative_flatness(net, (x, y), loss_fn=loss_fn, exact=exact)
    from torch.func import functional_call

    w = net[4].weight.detach()

    def mean_loss(flat):
        z = functional_call(net, {"4.weight": flat.reshape(w.shape)}, (x,))
        per = torch.nn.functional.cross_entropy(z, y, reduction="none") if loss_fn is None else brier(z, y)
        return per.mean()

    h = torch.autograd.functional.hessian(mean_loss, w.reshape(-1))
    assert m.details["mean_hessian_trace"] == pytest.approx(float(h.trace()), rel=1e-9)
