"""loss_landscape: centre = the plain loss, curves = closed forms / independent functional_call evaluations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatplug.measures import loss_landscape
from conftest import LinearLogit, Quadratic, tiny_batch, tiny_mlp


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 16, 4)
        self.double()
        with torch.no_grad():  # distinct, non-trivial running statistics and affine parameters
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def test_centre_equals_plain_cross_entropy():
    model, (x, y) = tiny_mlp(), tiny_batch(10)
    m = loss_landscape(model, [(x[:4], y[:4]), (x[4:], y[4:])], steps=5, quiet=True)
    with torch.no_grad():
        ref = float(F.cross_entropy(model(x), y))
        acc = float((model(x).argmax(1) == y).double().mean())
    assert m.details["centre_loss"] == pytest.approx(ref, rel=1e-12)
    assert m.details["losses"][2] == m.details["centre_loss"]
    assert m.details["accuracies"][2] == pytest.approx(acc, abs=1e-12)
    assert m.details["alphas"] == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0], abs=1e-15)


def test_quadratic_curve_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    n = 4
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = q @ q.T + 0.5 * torch.eye(n, dtype=torch.float64)
    w0 = torch.tensor([0.4, -1.0, 2.0, 0.7], dtype=torch.float64)
    x, y = torch.rand(5, 2, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.long)

    def loss_fn(logits, y):
        d = logits - w0
        return 0.5 * ((d @ A) * d).sum(1)

    m = loss_landscape(Quadratic(w0), (x, y), steps=7, span=0.6, normalization="none",
                       include_bias_and_norm=True, loss_fn=loss_fn, quiet=True)
    d = m.artifacts["directions"][0]["w"]
    assert d.abs().min() > 0  # a real (nonzero) direction was used
    expected = [0.5 * a**2 * float(d @ A @ d) for a in m.details["alphas"]]
    assert m.details["losses"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert m.value == pytest.approx(sum(expected) / len(expected), rel=1e-12)


def test_filter_normalisation_property_and_grid_values():
    model, (x, y) = ConvNet(), images()
    m = loss_landscape(model, (x, y), steps=3, span=0.5, quiet=True)
    d = m.artifacts["directions"][0]
    params = dict(model.named_parameters())
    for name, w in params.items():
        if w.dim() > 1:
            wn = w.detach().reshape(w.shape[0], -1).norm(dim=1)
            dn = d[name].reshape(w.shape[0], -1).norm(dim=1)
            assert torch.allclose(dn, wn, rtol=1e-9), name
        else:  # biases and batch-norm affine parameters
            assert torch.count_nonzero(d[name]) == 0, name
    # every grid point is the loss at w + a d, evaluated independently
    buffers = dict(model.named_buffers())
    model.eval()
    for a, loss in zip(m.details["alphas"], m.details["losses"]):
        override = {k: v.detach() + a * d[k] for k, v in params.items()} | buffers
        with torch.no_grad():
            ref = float(F.cross_entropy(functional_call(model, override, (x,)), y))
        assert loss == pytest.approx(ref, rel=1e-12)


def test_layer_normalisation_and_included_biases():
    model, (x, y) = ConvNet(), images()
    m = loss_landscape(model, (x, y), steps=3, normalization="layer", include_bias_and_norm=True, quiet=True)
    d = m.artifacts["directions"][0]
    for name, w in model.named_parameters():
        assert float(d[name].norm()) == pytest.approx(float(w.detach().norm()), rel=1e-9), name
    rows = d["conv.weight"].reshape(3, -1).norm(dim=1)
    assert not torch.allclose(rows, model.conv.weight.detach().reshape(3, -1).norm(dim=1))  # not per filter


@pytest.mark.parametrize("normalization", ["filter", "layer", "none"])
def test_included_biases_and_norm_parameters_move_along_themselves(normalization):
    """With include_bias_and_norm, Li et al.'s code (net_plotter.normalize_directions_for_weights, no
    ``ignore="biasbn"``) copies each bias and norm-layer parameter into the direction: d = w, so the
    grid point w + a d scales them by 1 + a. Before, a random draw rescaled to the parameter's norm
    stood in (cosine to w between -0.62 and 0.16 on real models)."""
    model, (x, y) = ConvNet(), images()
    m = loss_landscape(model, (x, y), steps=3, directions=2, normalization=normalization,
                       include_bias_and_norm=True, quiet=True)
    one_d = [(name, w) for name, w in model.named_parameters() if w.dim() <= 1]
    assert one_d
    for d in m.artifacts["directions"]:
        for name, w in one_d:
            assert torch.equal(d[name], w.detach()), name


def test_two_directions_grid():
    model, (x, y) = tiny_mlp(), tiny_batch(8)
    m = loss_landscape(model, (x, y), directions=2, steps=5, span=0.3, quiet=True)
    losses, accs = m.details["losses"], m.details["accuracies"]
    assert len(losses) == 5 and all(len(r) == 5 for r in losses)
    assert len(accs) == 5 and all(len(r) == 5 for r in accs)
    assert m.details["betas"] == m.details["alphas"]
    with torch.no_grad():
        ref = float(F.cross_entropy(model(x), y))
    assert losses[2][2] == pytest.approx(ref, rel=1e-12)
    d1, d2 = (dd for dd in m.artifacts["directions"])
    params = dict(model.named_parameters())
    a, b = m.details["alphas"][0], m.details["betas"][4]
    override = {k: v.detach() + a * d1[k] + b * d2[k] for k, v in params.items()}
    with torch.no_grad():
        corner = float(F.cross_entropy(functional_call(model, override, (x,)), y))
    assert losses[0][4] == pytest.approx(corner, rel=1e-12)
    flat = [v for r in losses for v in r]
    assert m.value == pytest.approx(sum(flat) / 25 - ref, rel=1e-12)


def test_inputs_gradient_direction_on_linear_model():
    """For logits W x + b and loss -logit_y the FGSM direction raises the loss by a ||W_y||_1 exactly."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double()
    g = torch.Generator().manual_seed(1)
    x = 0.4 + 0.2 * torch.rand(7, 6, generator=g, dtype=torch.float64)  # in [0.4, 0.6]: no clamping at |a| <= 0.1
    y = torch.randint(0, 3, (7,), generator=g)

    def loss_fn(logits, y):
        return -logits.gather(1, y[:, None]).squeeze(1)

    m = loss_landscape(model, (x, y), space="inputs", direction="gradient", steps=5, span=0.1,
                       loss_fn=loss_fn, quiet=True)
    W, b = model.weight.detach(), model.bias.detach()
    centre = float(-((x @ W.T + b).gather(1, y[:, None])).mean())
    l1 = float(W[y].abs().sum(1).mean())
    expected = [centre + a * l1 for a in m.details["alphas"]]
    assert m.details["losses"] == pytest.approx(expected, rel=1e-12)
    # with a large span the inputs are clamped to [0, 1]
    m = loss_landscape(model, (x, y), space="inputs", direction="gradient", steps=3, span=1.0,
                       loss_fn=loss_fn, quiet=True)
    xp = (x + torch.sign(-W[y])).clamp(0, 1)
    assert m.details["losses"][2] == pytest.approx(float(-((xp @ W.T + b).gather(1, y[:, None])).mean()), rel=1e-12)


def test_inputs_random_direction_is_an_linf_step():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double()
    g = torch.Generator().manual_seed(2)
    x = 0.4 + 0.2 * torch.rand(9, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=g)

    def loss_fn(logits, y):
        return -logits.gather(1, y[:, None]).squeeze(1)

    m = loss_landscape(model, (x, y), space="inputs", steps=5, span=0.1, loss_fn=loss_fn, quiet=True)
    W = model.weight.detach()
    c = m.details["centre_loss"]
    rises = [(loss - c) for loss in m.details["losses"]]
    # the loss is linear in a (fixed per-sample sign vectors) and bounded by the FGSM rise a ||W_y||_1
    slope = rises[4] / 0.1
    assert rises == pytest.approx([a * slope for a in m.details["alphas"]], rel=1e-9, abs=1e-13)
    assert abs(slope) <= float(W[y].abs().sum(1).mean()) + 1e-12
    assert abs(slope) > 0


def test_model_left_unchanged():
    model, (x, y) = ConvNet(), images()
    model.train()
    F.cross_entropy(model(x), y).backward()
    model.conv.bias.requires_grad_(False)
    model.fc.register_forward_hook(lambda *a: None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    hooks = dict(model.fc._forward_hooks)
    loss_landscape(model, (x, y), directions=2, steps=3, quiet=True)
    loss_landscape(model, (x, y), space="inputs", direction="gradient", directions=2, steps=3, quiet=True)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    assert dict(model.fc._forward_hooks) == hooks


def test_deterministic_given_seed():
    model, (x, y) = tiny_mlp(), tiny_batch(8)
    a = loss_landscape(model, (x, y), steps=3, seed=5, quiet=True)
    b = loss_landscape(model, (x, y), steps=3, seed=5, quiet=True)
    c = loss_landscape(model, (x, y), steps=3, seed=6, quiet=True)
    assert a.details["losses"] == b.details["losses"] != c.details["losses"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 4}, "steps: expected an odd integer"),
        ({"steps": 1}, "steps: expected an odd integer"),
        ({"steps": 2.0}, "steps"),
        ({"directions": 3}, "directions"),
        ({"span": 0.0}, "span"),
        ({"normalization": "batch"}, "normalization"),
        ({"space": "features"}, "space"),
        ({"space": "inputs", "direction": "adversarial"}, "direction"),
        ({"direction": "gradient"}, "space='inputs'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_landscape(tiny_mlp(), tiny_batch(), quiet=True, **kwargs)


def test_input_space_needs_unit_range_images():
    x, y = tiny_batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss_landscape(tiny_mlp(), (x * 255, y), space="inputs", steps=3, quiet=True)


# -- robust-loss landscapes (Stutz et al. 2021; Yamada et al. 2021): exact on logistic regression --


def mnist_3_vs_7(n=200):
    from conftest import shared_path
    from flatplug.sources import load_mnist

    data = load_mnist(shared_path("data", "mnist"), n=5 * n)
    keep = (data.y == 3) | (data.y == 7)
    return data.x[keep][:n].double(), (data.y[keep][:n] == 7).long()


def test_robust_landscape_equals_closed_form_robust_loss():
    """Logistic regression on real MNIST 3 vs 7, an L2 ball of inputs, no clipping. For a linear score
    z = w.x + b and labels s = +-1, the worst perturbation with ||d||_2 <= eps minimises s w.d, which
    by Cauchy-Schwarz is -eps ||w|| at d = -eps s w / ||w||: the worst margin is s (w.x + b) - eps ||w||
    and the robust loss softplus(-(s (w.x + b) - eps ||w||)). PGD (L2, no random start) reaches that
    d exactly, so every grid value must equal the closed form at the grid point's weights (w + a d_w,
    b + a d_b), and the robust accuracy the fraction of positive worst margins. Guards against
    adversarial examples computed once at the centre and reused along the slice (checked to differ),
    against clipping to [0, 1] when clip=None, and against the attack ignoring the measure's loss."""
    x, y = mnist_3_vs_7()
    s = 2.0 * y.double() - 1.0
    w = x[y == 1].flatten(1).mean(0) - x[y == 0].flatten(1).mean(0)  # a class-mean classifier
    b = -float(w @ x.flatten(1).mean(0))
    eps = 1.5
    model = LinearLogit(w, b)
    m = loss_landscape(model, (x, y), steps=7, span=0.6, normalization="layer", include_bias_and_norm=True,
                       adversarial={"eps": eps, "norm": "l2", "clip": None, "random_start": False}, quiet=True)
    d = m.artifacts["directions"][0]
    dw, db = d["weight"][0], float(d["bias"][0])
    expected, robust_acc, frozen = [], [], []
    x_frozen = x.flatten(1) - eps * s[:, None] * (w / w.norm())  # the worst case at the centre only
    for a in m.details["alphas"]:
        wa, ba = w + a * dw, b + a * db
        margin = s * (x.flatten(1) @ wa + ba) - eps * wa.norm()
        expected.append(float(F.softplus(-margin).mean()))
        robust_acc.append(float((margin > 0).double().mean()))
        frozen.append(float(F.softplus(-(s * (x_frozen @ wa + ba))).mean()))
    assert m.details["losses"] == pytest.approx(expected, rel=1e-10)
    assert m.details["accuracies"] == pytest.approx(robust_acc, abs=1e-12)
    assert m.details["settings"]["adversarial"]["clip"] is None
    assert abs(frozen[0] - expected[0]) > 1e-3 and abs(frozen[-1] - expected[-1]) > 1e-3  # >> the tolerance
    # the inputs really left [0, 1]: with the default clip the same landscape differs
    clipped = loss_landscape(model, (x, y), steps=7, span=0.6, normalization="layer", include_bias_and_norm=True,
                             adversarial={"eps": eps, "norm": "l2", "random_start": False}, quiet=True)
    assert abs(clipped.details["losses"][3] - expected[3]) > 1e-3


def test_robust_landscape_bad_arguments():
    model, batch = tiny_mlp(), tiny_batch()
    with pytest.raises(ValueError, match="eps"):
        loss_landscape(model, batch, steps=3, adversarial={"norm": "l2"}, quiet=True)
    with pytest.raises(ValueError, match="unknown keys"):
        loss_landscape(model, batch, steps=3, adversarial={"eps": 0.1, "alpha": 0.01}, quiet=True)
    with pytest.raises(ValueError, match="space='weights'"):
        loss_landscape(model, batch, steps=3, space="inputs", adversarial={"eps": 0.1}, quiet=True)
    with pytest.raises(ValueError, match="clip"):
        loss_landscape(model, batch, steps=3, adversarial={"eps": 0.1, "clip": (1.0, 0.0)}, quiet=True)


@pytest.mark.parametrize("normalization", ["layer", "filter"])
def test_float32_normalisation_of_a_wide_layer_is_exact_to_float32(normalization):
    """A float32 layer of WideResNet-28-10's widest shape ([640, 640, 3, 3], 3.7M entries): the
    direction's norm (per layer or per filter) equals the weight's, both measured in float64, to
    float32 rounding. A float32 ``norm`` over the layer on a CPU is off by about 8e-5."""
    from flatplug.measures.loss_landscape import normalize_direction

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(640, 640, 3, 3, generator=g) * 0.01 + 0.003
    direction = torch.randn(640, 640, 3, 3, generator=g)
    out = normalize_direction(direction, weight, normalization, include_bias_and_norm=False)
    assert out.dtype == torch.float32
    if normalization == "layer":
        got, want = out.double().norm(), weight.double().norm()
    else:
        got, want = out.double().reshape(640, -1).norm(dim=1), weight.double().reshape(640, -1).norm(dim=1)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
