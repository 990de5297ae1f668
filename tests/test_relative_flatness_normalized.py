"""relative_flatness(normalize_features=True) against the dense Hessian of an explicitly normalised network.

Petzka et al. 2021 make relative flatness invariant to rescaling single features by measuring it on normalised
features: each feature phi_j divided by its standard deviation over the data, and the weight column w_{.j} of the
penultimate layer multiplied by it, which leaves the network's function unchanged. The reference here builds that
network (features -> divide by std -> linear layer with W diag(std)), checks it computes the same logits, and takes
kappa from the autograd Hessian of its loss w.r.t. the new weight matrix. (Any common factor of all the stds cancels:
kappa is invariant to phi -> a phi, W -> W / a, so the population and the sample std give the same value.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import dense_hessian, tiny_batch
from flatplug.measures import relative_flatness


def make_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 4)).double()


class DivideBy(nn.Module):
    def __init__(self, std: torch.Tensor):
        super().__init__()
        self.register_buffer("std", std)

    def forward(self, phi):
        return phi / self.std


def normalised_network(net: nn.Sequential, x: torch.Tensor) -> nn.Sequential:
    features, head = net[:4], net[4]
    with torch.no_grad():
        std = features(x).std(0, unbiased=False)  # per feature, over the whole data set
    new_head = nn.Linear(5, 4).double()
    with torch.no_grad():
        new_head.weight.copy_(head.weight * std)  # column j times std_j
        new_head.bias.copy_(head.bias)
    return nn.Sequential(features, DivideBy(std), new_head)


def kappa_from_dense_hessian(net: nn.Sequential, x, y, variant: str) -> float:
    w = net[2].weight.detach()
    k, d = w.shape
    h = dense_hessian(net, x, y, ["2.weight"]).reshape(k, d, k, d)
    traces = torch.einsum("sjtj->st", h)  # tr(H_{s,s'})
    if variant == "pairwise":
        return float((w @ w.T * traces).sum())
    return float(w.pow(2).sum() * traces.trace())


@pytest.mark.parametrize("variant", ["pairwise", "trace"])
@pytest.mark.parametrize("seed", [0, 3])
def test_normalized_equals_dense_hessian_of_the_normalised_network(variant, seed):
    """Guards against normalising the features without rescaling the weights (or dividing the weights instead of
    multiplying them), per-sample or global instead of per-feature scales, scales taken from one batch instead of
    the whole data set (the measure runs on three batches here), and against the plain value being returned."""
    net = make_net(seed)
    x, y = tiny_batch(30, 6, 4, seed=seed + 1)
    normalised = normalised_network(net, x)
    with torch.no_grad():
        torch.testing.assert_close(normalised(x), net(x), rtol=1e-12, atol=1e-12)  # the same function
    expected = kappa_from_dense_hessian(normalised, x, y, variant)
    batches = [(x[:8], y[:8]), (x[8:19], y[8:19]), (x[19:], y[19:])]
    m = relative_flatness(net, batches, variant=variant, normalize_features=True)
    assert m.value == pytest.approx(expected, rel=1e-9)
    assert m.details["normalize_features"] is True
    plain = relative_flatness(net, (x, y), variant=variant).value
    assert abs(plain - expected) > 1e-3 * abs(expected)  # normalisation changes the value here: the test can fail
