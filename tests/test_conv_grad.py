"""second_order_convs: the same function, gradient and Hessian as stock autograd, on every
convolution shape it switches (the reference Hessian is torch.autograd.functional's, built on the
stock graph), and it leaves alone what it must not switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import assert_operator_matches_dense, stock_gradient_norm_derivatives, switched_against_stock
from flatplug._conv_grad import second_order_convs

# float64 products of Hessians with a few hundred entries: agreement to rounding
RTOL = 1e-10

CONFIGS = {
    # name: (conv class, input shape, two layers' settings)
    "2d-stride2-odd": (nn.Conv2d, (5, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2)),
    "2d-dilation-groups": (nn.Conv2d, (4, 4, 8, 8), dict(kernel_size=3, dilation=2, padding=2, groups=2),
                           dict(kernel_size=3, stride=(2, 1), groups=4, bias=False)),
    "2d-asymmetric": (nn.Conv2d, (4, 2, 6, 9), dict(kernel_size=(3, 2), stride=(1, 3), padding=(2, 0)),
                      dict(kernel_size=1)),
    "1d": (nn.Conv1d, (5, 3, 11), dict(kernel_size=4, stride=3, padding=1), dict(kernel_size=2, dilation=2)),
    "3d": (nn.Conv3d, (3, 2, 5, 4, 5), dict(kernel_size=2, stride=2, padding=1), dict(kernel_size=2, bias=False)),
}


def conv_net(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    cls, shape, first, second = CONFIGS[name]
    torch.manual_seed(0)
    hidden = 4
    body = nn.Sequential(cls(shape[1], hidden, **first), nn.Tanh(), cls(hidden, hidden, **second), nn.Softplus())
    with torch.no_grad():
        features = body(torch.zeros(shape)).flatten(1).shape[1]
    model = nn.Sequential(body, nn.Flatten(), nn.Linear(features, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (shape[0],), generator=g)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_function_gradient_and_hessian_match_stock_autograd(name):
    """Outputs and gradients equal the stock convolution's; Hessian-vector products (double
    backward of the graph recorded inside the block) equal the dense Hessian's, for strides
    that leave a remainder (the transposed convolution's output padding), dilation, groups,
    asymmetric kernels and padding, no bias, and 1-D/3-D convolutions."""
    model, x, y = conv_net(name)
    # (the input gradient too: the transposed convolution on the first layer)
    out, stock_out = switched_against_stock(model, x, y, second_order_convs, RTOL, switched=2, grad_atol=1e-12)
    assert torch.allclose(out, stock_out, rtol=0, atol=1e-12)


def test_hessian_operator_products_match_the_dense_hessian_on_every_layout():
    """The operator records its graphs with switched convolutions; cached, streamed over batches
    and uncached it gives the dense Hessian's products (CPU: channels_last batches)."""
    model, x, y = conv_net("2d-dilation-groups")
    assert_operator_matches_dense(model, x, y, RTOL, seed=5)


def test_products_on_a_subset_of_the_parameters_match_the_dense_hessian():
    """With only some weights selected, the other convolutions have frozen weights (their input
    gradient alone is recorded) and the selected ones the full gradient node."""
    model, x, y = conv_net("2d-stride2-odd")
    assert_operator_matches_dense(model, x, y, RTOL, seed=6, names=["0.2.weight", "0.2.bias", "2.weight"])


def test_the_switch_is_undone_and_leaves_what_it_cannot_handle_alone():
    """Convolutions with reflect padding, string padding or an overridden ``_conv_forward`` are
    not switched (they still compute the same thing); every switch is removed on exit, also
    after an error inside the block."""

    class Custom(nn.Conv2d):
        def _conv_forward(self, input, weight, bias):
            return super()._conv_forward(input, weight, bias) * 2

    convs = [nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"),
             nn.Conv2d(1, 1, 3, padding="same"), Custom(1, 1, 3, padding=1), nn.ConvTranspose2d(1, 1, 3, padding=1)]
    model = nn.Sequential(*convs)
    x = torch.randn(2, 1, 5, 5)
    stock = model(x)
    with pytest.raises(RuntimeError, match="inside"):
        with second_order_convs(model) as switched:
            assert switched == 1
            assert torch.allclose(model(x), stock, atol=1e-6)
            raise RuntimeError("inside")
    assert not any("_conv_forward" in vars(m) for m in model.modules())


def test_autocast_and_unbatched_inputs_take_the_stock_path():
    """Under autocast the stock convolution runs (it casts), and an unbatched input is handled as
    stock Conv2d handles it."""
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 6, 6)
    with second_order_convs(conv):
        unbatched = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = conv(x[None])
    assert torch.allclose(unbatched, conv(x), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cast.dtype == torch.bfloat16 and torch.equal(cast, conv(x[None]))


def _graph_nodes(root) -> set[str]:
    seen, stack, names = set(), [root], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return names


@pytest.mark.parametrize("name", ["2d-stride2-odd", "2d-dilation-groups", "1d"])
@pytest.mark.parametrize("frozen", [True, False], ids=["ascent (weights frozen)", "regulariser (weights too)"])
@pytest.mark.parametrize("q", [1.0, 2.0])
def test_input_gradient_norm_derivatives_match_stock_autograd(name, frozen, q):
    """``gradient_norms(create_graph=True)``, the LFR ascent's and regulariser's double backward,
    records the switched convolutions, and the derivatives of ``||grad_x l||_q`` w.r.t. the input
    (and the weights) equal those of the stock graph (float64, to rounding)."""
    from flatplug._loss import cross_entropy
    from flatplug.measures.local_flatness import gradient_norms

    model, x, y = conv_net(name)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(not frozen)
    wrt = [] if frozen else params
    stock_norms, stock = stock_gradient_norm_derivatives(model, x, y, q, wrt)

    xp, norms = gradient_norms(model, x, y, cross_entropy, q, create_graph=True)
    assert "_ConvolutionBackward" in _graph_nodes(norms.grad_fn)  # recorded by the switched convolutions
    assert not any("_conv_forward" in vars(m) for m in model.modules())  # and the switch undone
    assert torch.allclose(norms, stock_norms, rtol=RTOL, atol=0)
    got = flat(torch.autograd.grad(norms.sum(), [xp] + wrt))
    assert float((got - stock).abs().max()) <= RTOL * float(stock.abs().max())
