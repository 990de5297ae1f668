"""Contracts every registered built-in measure keeps: model left exactly as found, clear bad-input errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import flatplug as fp

#: small, fast settings per measure (required parameters included)
PARAMS = {
    "relative_flatness": {},
    "hessian_eigenvalues": {"k": 2, "max_iter": 20},
    "hessian_trace": {"probes": 5},
    "hessian_density": {"iterations": 10},
    "sharpness": {"rho": 0.05, "steps": 3},
    "loss_landscape": {"steps": 5},
    "local_flatness": {"eps": 0.05, "steps": 3},
    "feature_robustness": {"delta": 0.1, "samples": 4, "steps": 2},
    "feature_displacement": {"eps": 0.05, "steps": 3},
}


def test_every_builtin_measure_has_settings_here():
    assert set(PARAMS) == set(fp.measures.MEASURES)


class Net(nn.Module):
    """A small CNN with batch norm, dropout, a frozen parameter, a stored grad and a user hook."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4 * 16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = nn.functional.max_pool2d(h, 2).flatten(1)
        return self.fc2(self.drop(torch.relu(self.fc1(h))))


def snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [
            (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks)) for m in model.modules()
        ],
    }


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_model_left_exactly_as_found(name):
    model = Net()
    model.train()
    model.bn.eval()  # mixed modes must survive
    model.conv.bias.requires_grad_(False)
    x, y = data()
    nn.functional.cross_entropy(model(x), y).backward()  # stored grads
    calls = []
    model.fc1.register_forward_hook(lambda m, i, o: calls.append(1))
    before = snapshot(model)
    result = fp.measure(name, model, [data(6, 1), data(6, 2)], **PARAMS[name])
    after = snapshot(model)
    assert isinstance(result, fp.Measurement) and result.name == name
    assert torch.isfinite(torch.tensor(result.value))
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{name} changed {k}"
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_bad_inputs_have_clear_errors(name):
    model, params = Net(), PARAMS[name]
    x, y = data()
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fp.measure(name, model, (bad_x, y), **params)
    with pytest.raises(ValueError, match="labels for 12 inputs"):
        fp.measure(name, model, (x, y[:5]), **params)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        fp.measure(name, model, (x, y + 3), **params)
    with pytest.raises(ValueError, match="no batches"):
        fp.measure(name, model, [], **params)
    with pytest.raises(TypeError, match="integer class labels"):
        fp.measure(name, model, (x, y.float()), **params)


class ThreeD(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 6)

    def forward(self, x):
        return self.fc(x.flatten(1)).reshape(-1, 2, 3)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_model_must_return_2d_logits(name):
    x, y = data()
    with pytest.raises(ValueError, match=r"logits of shape \[N, classes\]"):
        fp.measure(name, ThreeD(), (x, y), **PARAMS[name])


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(1, 9),
    width=st.integers(1, 6),
    classes=st.integers(2, 5),
    scale=st.floats(1e-3, 1e3),
    name=st.sampled_from(sorted(PARAMS)),
)
def test_random_shapes_and_scales_give_finite_values(n, width, classes, scale, name):
    torch.manual_seed(n * 31 + width)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.Tanh(), nn.Linear(width, classes)).double()
    with torch.no_grad():
        model[3].weight.mul_(scale)
    x = torch.rand(n, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, classes, (n,))
    result = fp.measure(name, model, (x, y), **PARAMS[name])
    assert torch.isfinite(torch.tensor(result.value)), (name, result)
    if result.per_sample is not None:
        assert result.per_sample.shape[0] == n
