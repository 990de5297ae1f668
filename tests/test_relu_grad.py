"""second_order_relus: the same function, gradient and Hessian as stock autograd (in place or
not), without the zero branch stock autograd records, and it leaves alone what it must not switch.
The reference Hessian is torch.autograd.functional's on the stock graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import dense_hessian
from flatplug._relu_grad import second_order_relus
from flatplug._state import preserved
from flatplug.hvp import HessianOperator

RTOL = 1e-10  # float64 products of a few-hundred-entry Hessian: agreement to rounding


def relu_net(inplace: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(inplace=inplace),
        nn.Conv2d(3, 3, 3, stride=2), nn.ReLU(inplace=inplace), nn.Flatten(),
        nn.Linear(12, 6), nn.ReLU(inplace=inplace), nn.Linear(6, 3),
    ).double().eval()
    with torch.no_grad():  # non-trivial running statistics, as after training
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 6, 6, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (6,), generator=g)


def first_order(model, x, y, switch: bool) -> list[torch.Tensor]:
    params = list(model.parameters())
    if switch:
        with second_order_relus(model) as n:
            assert n == 3
            return list(torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True))
    return list(torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True))


def products(model, grads, v: torch.Tensor) -> torch.Tensor:
    params = list(model.parameters())
    vs = [c.reshape(p.shape) for c, p in zip(torch.split(v, [p.numel() for p in params]), params)]
    return torch.cat([h.reshape(-1) for h in torch.autograd.grad(grads, params, grad_outputs=vs)])


def dead_branches(grads: list[torch.Tensor]) -> tuple[int, int]:
    """(ThresholdBackwardBackward nodes, those of them still wired to the ReLU's output)."""
    seen, stack, nodes, wired = set(), [g.grad_fn for g in grads if g.grad_fn is not None], 0, 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "ThresholdBackwardBackward0":
            nodes += 1
            wired += node.next_functions[1][0] is not None
        stack.extend(f for f, _ in node.next_functions)
    return nodes, wired


@pytest.mark.parametrize("inplace", [False, True])
def test_gradient_and_hessian_match_stock_autograd_bit_for_bit(inplace):
    model, x, y = relu_net(inplace)
    dense = dense_hessian(model, x, y)
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stock = first_order(model, x, y, switch=False)
    switched = first_order(model, x, y, switch=True)
    for a, b in zip(stock, switched):
        assert torch.equal(a, b)
    hv = products(model, switched, v)
    assert torch.equal(hv, products(model, stock, v))  # the branch removed only carried zeros
    expected = dense @ v
    assert float((hv - expected).abs().max()) <= RTOL * float(expected.abs().max())


def test_the_zero_branch_is_no_longer_recorded():
    """Stock autograd wires each ReLU's recorded gradient back to the ReLU's output (a derivative
    that is always zero); the switched graph does not."""
    model, x, y = relu_net(False)
    assert dead_branches(first_order(model, x, y, switch=False)) == (3, 3)
    nodes, wired = dead_branches(first_order(model, x, y, switch=True))
    assert nodes == 3 and wired == 0


def test_hessian_operator_records_its_graph_with_switched_relus():
    """The operator's products (cached, streamed, uncached) equal the dense Hessian's on a
    model with in-place ReLUs, and its model is left unswitched."""
    model, x, y = relu_net(True)
    dense = dense_hessian(model, x, y)
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for data, cache in (((x, y), "auto"), ([(x[:3], y[:3]), (x[3:], y[3:])], "auto"), ((x, y), False)):
        with preserved(model):
            hv = HessianOperator(model, data, cache_graph=cache).matvec(v)
        assert float((hv - dense @ v).abs().max()) <= RTOL * float((dense @ v).abs().max())
    assert not any("forward" in vars(m) for m in model.modules())


def test_in_place_semantics_and_the_version_guard_are_kept():
    """An in-place ReLU still returns (and changes) its input; changing a ReLU's output in place
    before the backward is refused, as stock autograd refuses it."""
    x = torch.tensor([-1.0, 2.0, -3.0, 4.0], requires_grad=True)
    relu = nn.ReLU(inplace=True)
    with second_order_relus(relu):
        h = x * 1
        out = relu(h)
    assert out is h and torch.equal(h, torch.tensor([0.0, 2.0, 0.0, 4.0]))
    out.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    relu = nn.ReLU()
    with second_order_relus(relu):
        out = relu(x * 1)
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_the_switch_is_undone_and_leaves_what_it_must_not_touch_alone():
    """Subclasses of nn.ReLU, modules with an instance-level forward and other activations keep
    their own forward; every switch is removed on exit, also after an error; without gradients
    the stock function runs."""

    class Doubled(nn.ReLU):
        def forward(self, input):
            return super().forward(input) * 2

    own = nn.ReLU()
    own.forward = lambda input: input.clamp(min=-1.0)  # type: ignore[method-assign]
    model = nn.Sequential(nn.ReLU(), Doubled(), own, nn.LeakyReLU())
    x = torch.randn(3, 4)
    stock = model(x)
    with pytest.raises(RuntimeError, match="inside"):
        with second_order_relus(model) as switched:
            assert switched == 1
            assert torch.equal(model(x), stock)
            with torch.no_grad():
                assert model[0](x).grad_fn is None and torch.equal(model(x), stock)
            raise RuntimeError("inside")
    assert "forward" not in vars(model[0]) and "forward" in vars(own)
    assert torch.equal(model(x), stock)
