"""The channels_last fast path is taken only where a model's forward accepts it: a forward that
reshapes activations with ``.view`` (common in model code) fails on that layout, and must run in
its own layout with the same numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conftest import dense_hessian
from flatplug._data import accepts_channels_last, cpu_channels_last
from flatplug._resources import channels_last_if_accepted
from flatplug.measures import hessian_eigenvalues
from flatplug.measures.local_flatness import ascent_point, max_gradient_norm_point


class ViewNet(nn.Module):
    """A LeNet-style net that flattens with ``.view`` after its convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(self.bn(self.conv(x)))
        return self.fc(out.view(out.size(0), -1))


class FlattenNet(ViewNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)


def nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    view = ViewNet().double().eval()
    flat = FlattenNet().double().eval()
    flat.load_state_dict(view.state_dict())
    return view, flat


def test_the_probe_tells_the_two_apart_and_changes_no_state():
    view, flat = nets()
    x, _ = batch()
    flat.train()
    before = flat.bn.running_mean.clone()
    assert accepts_channels_last(flat, x) and cpu_channels_last(flat, x)
    assert not accepts_channels_last(view, x) and not cpu_channels_last(view, x)
    assert flat.training and flat.bn.training  # modes put back
    assert torch.equal(flat.bn.running_mean, before)  # the probe ran in eval mode: no statistics update
    assert not cpu_channels_last(flat, x.flatten(1)) and not cpu_channels_last(nn.Linear(108, 3).double(), x.flatten(1))
    assert not cpu_channels_last(flat.forward, x)  # a plain callable (an attack's get_logits): its own layout


def test_hessian_eigenvalues_of_a_view_net_match_the_dense_hessian():
    """Before the probe, the operator passed channels_last batches to every conv net on a CPU and a
    ``.view`` forward raised; now it runs, in either layout, and gives the dense Hessian's top
    eigenvalue."""
    x, y = batch()
    for model in nets():
        top = float(torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1])
        value = hessian_eigenvalues(model, (x, y), tol=1e-10, max_iter=200, quiet=True).value
        assert abs(value - top) <= 1e-8 * abs(top)


def test_ascent_runs_on_a_view_net_and_keeps_the_callers_layout():
    """The LFR ascent takes the fast layout where it can; the points come back in the caller's
    layout with the values of the ascent run in that layout (here: the same network written with
    ``.view``, which cannot take the fast path)."""
    view, flat = nets()
    x, y = batch()
    pts = {}
    for name, model in (("view", view), ("flat", flat)):
        pts[name] = ascent_point(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1))
        best, norms = max_gradient_norm_point(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1))
        pts[name + "-best"], pts[name + "-norms"] = best, norms
        assert pts[name].is_contiguous() and best.is_contiguous()
    for key in ("", "-best", "-norms"):
        assert torch.allclose(pts["flat" + key], pts["view" + key], rtol=0, atol=1e-12)


def test_cuda_scoring_layout_falls_back_for_a_view_net():
    """What scoring does on CUDA (channels_last weights), checked on the CPU: a forward that
    accepts it keeps channels_last weights, a ``.view`` forward gets its own layout back and still
    computes the same logits."""
    view, flat = nets()
    x, _ = batch()
    expected = F.softmax(flat(x), 1)
    flat = channels_last_if_accepted(flat, x)
    view = channels_last_if_accepted(view, x)
    assert flat.conv.weight.is_contiguous(memory_format=torch.channels_last) and not flat.conv.weight.is_contiguous()
    assert view.conv.weight.is_contiguous()
    assert torch.allclose(F.softmax(view(x), 1), expected, atol=1e-12)


def test_training_loop_takes_the_fast_layout_only_where_accepted_with_the_same_weights():
    """``train`` passes channels_last batches on a CPU where the forward accepts them: the
    ``.flatten`` net (fast layout) and the same net written with ``.view`` (its own layout) end
    with the same weights after an epoch of LFR (double backward, random starts) and of SGD."""
    import flatplug as fp

    x, y = batch()
    for method, params in (("standard", {}), ("lfr", {"eps": 0.1, "steps": 3})):
        weights = []
        for model in nets():
            model.train()
            fp.train(model, [(x[:3], y[:3]), (x[3:], y[3:])], method=method, epochs=1, seed=0, quiet=True,
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.5), **params)
            weights.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        assert torch.allclose(weights[0], weights[1], rtol=0, atol=1e-10), method
