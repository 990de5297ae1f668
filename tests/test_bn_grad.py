"""second_order_batchnorms: eval-mode BatchNorm layers recorded in elementwise ops give the stock
forward bit for bit, and the stock gradient and Hessian to rounding (the reference Hessian is
torch.autograd.functional's, built on the stock graph); train mode, autocast and modules it must
not touch take the stock path; the layout of channels_last activations survives the double
backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import assert_operator_matches_dense, stock_gradient_norm_derivatives, switched_against_stock
from flatplug._bn_grad import second_order_batchnorms
from flatplug._second_order import second_order_layers
from flatplug._state import preserved
from flatplug.hvp import HessianOperator

RTOL = 1e-10  # float64 products of Hessians with a few hundred entries: agreement to rounding


def _randomise(bn: nn.Module, g: torch.Generator) -> None:
    """Running statistics and affine parameters away from their identity initialisation."""
    with torch.no_grad():
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) * 1.5 + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.2)


def bn_net(affine: bool = True, dim: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """conv -> BN -> tanh -> conv -> BN -> softplus -> linear -> BN1d -> linear, float64, eval mode."""
    torch.manual_seed(0)
    conv, bn = {2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)}[dim]
    shape = (5, 2) + (5,) * dim
    body = nn.Sequential(conv(2, 3, 3, padding=1), bn(3, affine=affine), nn.Tanh(), conv(3, 3, 2, stride=2),
                         bn(3, affine=affine), nn.Softplus())
    with torch.no_grad():
        features = body(torch.zeros(shape)).flatten(1).shape[1]
    model = nn.Sequential(body, nn.Flatten(), nn.Linear(features, 4), nn.BatchNorm1d(4, affine=affine), nn.Tanh(),
                          nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _randomise(m, g)
    model.eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (shape[0],), generator=g)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no affine"])
@pytest.mark.parametrize("dim", [2, 3])
def test_function_gradient_and_hessian_match_stock_autograd(affine, dim):
    """BatchNorm1d/2d/3d, with and without affine parameters: the output is the stock one bit for
    bit, the gradient (input included) equals the stock gradient and the Hessian-vector products
    of the graph recorded inside the block equal the dense Hessian's."""
    model, x, y = bn_net(affine, dim)
    out, stock_out = switched_against_stock(model, x, y, second_order_batchnorms, RTOL, switched=3)
    assert torch.equal(out, stock_out)


def test_hessian_operator_products_match_the_dense_hessian():
    """The operator records with both switches (convolutions and BatchNorm): cached, streamed
    over batches, uncached, and on a subset of the parameters (a BatchNorm weight among them)."""
    model, x, y = bn_net()
    assert_operator_matches_dense(model, x, y, RTOL, seed=5)
    assert_operator_matches_dense(model, x, y, RTOL, seed=6, names=["0.1.weight", "0.1.bias", "0.3.weight", "3.weight"])


def test_convolutions_get_channels_last_operands_through_the_double_backward():
    """The reason for the switch: with channels_last activations, stock autograd's BatchNorm double
    backward hands default-layout (NCHW) tensors to the convolutions of a product, which oneDNN
    then reorders or runs on its slow path; in the switched graph every activation-shaped operand
    of a convolution is channels_last (also when a pooling head sends an NCHW gradient down)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from flatplug._conv_grad import second_order_convs

    class ConvOperands(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.default = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "convolution" in str(func):
                self.default += [str(func) for a in args if isinstance(a, torch.Tensor) and a.dim() == 4
                                 and a.shape[0] == 4 and 0 not in a.stride()  # activations, not broadcasts
                                 and not a.is_contiguous(memory_format=torch.channels_last)]
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 0])
    for act, head in ((nn.ReLU, [nn.AvgPool2d(6), nn.Flatten(), nn.Linear(8, 3)]),  # WideResNet's
                      (nn.Softplus, [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)]),  # NCHW gradient
                      (nn.Softplus, [nn.Flatten(), nn.Linear(288, 3)])):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(), nn.Conv2d(8, 8, 3, padding=1),
                              nn.BatchNorm2d(8), act(), *head)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                _randomise(m, g)
        model.eval()

        def product(switch) -> list[str]:
            with preserved(model):
                op = HessianOperator(model, (x, y))
                op._recording = lambda create_graph: switch(model) if create_graph else torch.enable_grad()
                v = torch.ones(op.dim)
                op.matvec(v)  # builds the graph
                with ConvOperands() as seen:
                    op.matvec(v)
            return seen.default

        assert product(second_order_layers) == []
        assert product(second_order_convs)  # stock BatchNorm (if a torch release fixes this, drop this line)


def test_train_mode_autocast_and_other_dtypes_take_the_stock_path():
    """In train mode (batch statistics, running statistics updated) the stock forward runs; under
    autocast and for an input whose dtype differs from the statistics' too."""
    bn = nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    stock_bn = nn.BatchNorm2d(3)
    with second_order_batchnorms(bn) as switched:
        assert switched == 1
        out = bn(x)  # train mode
    assert torch.equal(out, stock_bn(x))
    assert torch.equal(bn.running_mean, stock_bn.running_mean) and int(bn.num_batches_tracked) == 1
    bn.eval()
    x = x.requires_grad_(True)
    half = x.detach().bfloat16().requires_grad_(True)  # bf16 input, float32 statistics: stock mixed-dtype kernel
    with second_order_batchnorms(bn):
        assert bn(x).grad_fn.name() == "_BatchNormEvalBackward"
        mixed = bn(half)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = bn(x)
    assert mixed.grad_fn.name() == "NativeBatchNormBackward0" and torch.equal(mixed, bn(half))
    assert "_BatchNormEval" not in cast.grad_fn.name()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cast, bn(x))


def test_the_switch_is_undone_and_leaves_what_it_cannot_handle_alone():
    """No running statistics, a subclass with its own forward, SyncBatchNorm and lazy modules are not
    switched; every switch is removed on exit, also after an error inside the block."""

    class Custom(nn.BatchNorm2d):
        def forward(self, input):
            return super().forward(input) * 2

    norms = [nn.BatchNorm2d(2), nn.BatchNorm2d(2, track_running_stats=False), Custom(2), nn.SyncBatchNorm(2),
             nn.LazyBatchNorm2d()]
    model = nn.Sequential(*norms).eval()
    with pytest.raises(RuntimeError, match="inside"):
        with second_order_batchnorms(model) as switched:
            assert switched == 1
            assert "forward" in vars(norms[0])
            raise RuntimeError("inside")
    assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.parametrize("frozen", [True, False], ids=["ascent (weights frozen)", "regulariser (weights too)"])
def test_input_gradient_norm_derivatives_match_stock_autograd(frozen):
    """``gradient_norms(create_graph=True)`` (LFR's ascent and regulariser, local flatness) records
    the switched BatchNorm layers, and the derivatives of ``||grad_x l||_1`` w.r.t. the input (and
    the weights) equal those of the stock graph (float64, to rounding)."""
    from flatplug._loss import cross_entropy
    from flatplug.measures.local_flatness import gradient_norms

    model, x, y = bn_net()
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(not frozen)
    wrt = [] if frozen else params
    stock_norms, stock = stock_gradient_norm_derivatives(model, x, y, 1.0, wrt)

    seen = []
    hook = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.grad_fn.name()) if isinstance(m, nn.BatchNorm2d) else None)
    try:
        xp, norms = gradient_norms(model, x, y, cross_entropy, 1.0, create_graph=True)
    finally:
        hook.remove()
    assert seen == ["_BatchNormEvalBackward"] * 2
    assert not any("forward" in vars(m) for m in model.modules())  # the switch undone
    assert torch.allclose(norms, stock_norms, rtol=RTOL, atol=0)
    got = flat(torch.autograd.grad(norms.sum(), [xp] + wrt))
    assert float((got - stock).abs().max()) <= RTOL * float(stock.abs().max())


@pytest.fixture(scope="module")
def cifar_bn_cnn():
    """A small conv + BatchNorm net trained for one epoch on 256 real CIFAR-10 images (real running
    statistics), in eval mode, and 64 other real images to measure on (channels_last on a CPU)."""
    import flatplug as fp
    from conftest import shared_path
    from flatplug.sources import load_imagefolder

    data = load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=320, seed=0)
    x, y = data.x, data.y
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AvgPool2d(4), nn.Flatten(), nn.Linear(32, 10))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    fp.train(model, batches, method="standard", epochs=1, quiet=True, seed=0)
    return model.eval(), x[256:], y[256:]


def test_defaults_on_real_cifar10_agree_with_the_stock_graph(cifar_bn_cnn, monkeypatch):
    """The path a user takes, defaults only (plus the radius), on real images: the top Hessian
    eigenvalue, the Hessian trace's estimate and local flatness with the switched BatchNorm layers
    equal those computed on the stock BatchNorm graph (float32: to rounding, amplified a little by
    Lanczos and by the ascent)."""
    import importlib

    from flatplug._conv_grad import second_order_convs
    from flatplug.measures import hessian_eigenvalues, hessian_trace, local_flatness

    model, x, y = cifar_bn_cnn
    switched = []
    hook = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: switched.append(o.grad_fn.name()) if isinstance(m, nn.BatchNorm2d) and o.grad_fn else None)
    try:
        ours = [hessian_eigenvalues(model, (x, y)).value, hessian_trace(model, (x, y)).value,
                local_flatness(model, (x, y), eps=8 / 255, quiet=True).value]
    finally:
        hook.remove()
    assert "_BatchNormEvalBackward" in switched  # (first-order-only passes stay stock: NativeBatchNormBackward0)
    monkeypatch.setattr(importlib.import_module("flatplug.hvp"), "second_order_layers", second_order_convs)
    monkeypatch.setattr(importlib.import_module("flatplug.measures.local_flatness"), "second_order_layers",
                        second_order_convs)
    stock = [hessian_eigenvalues(model, (x, y)).value, hessian_trace(model, (x, y)).value,
             local_flatness(model, (x, y), eps=8 / 255, quiet=True).value]
    assert all(v > 0 for v in stock)
    for a, b in zip(ours, stock):
        assert abs(a - b) <= 1e-5 * abs(b), (ours, stock)
