"""Convolutions whose gradient is built from ops with fast derivatives, for double backward.

A Hessian-vector product by double backward differentiates the first-order gradient graph. For
``y = conv(x, W)`` stock autograd records the input gradient ``convolution_backward(gO, x, W)``,
and the derivative of that w.r.t. ``W`` (``_convolution_double_backward``) is a weight gradient
that PyTorch computes as a *forward* convolution over transposed tensors: the feature maps play
the kernel (a ``[C, N, H, W]`` input against a ``[C', N, H', W']`` "kernel"). oneDNN has no fast
path for that shape, so on a CPU it takes about a quarter of an HVP on ``resnet4b``. The same
formula runs when only the *input* gradient was recorded and is differentiated w.r.t. the input
(LFR's ascent on the input-gradient norm, weights frozen): it still computes that convolution over
transposed feature maps, for nothing the caller asked for.

:func:`second_order_convs` records the same first-order gradient differently: the input
gradient as a transposed convolution ``convT(gO, W)`` and the weight gradient by the backends'
weight-gradient kernel with its derivatives written out (``conv(x, .)`` for ``gO``,
``convT(gO, .)`` for ``x``, each only when needed: stock autograd also computes the latter for
the first layer, whose input needs no gradient). The derivatives are then convolutions,
transposed convolutions and ordinary weight gradients, all on the backends' fast kernels. The
function computed, the gradient and the Hessian are the same up to float rounding (about 1e-7
relative in float32; tested against the stock graph and dense Hessians). Used by
:class:`flatplug.hvp.HessianOperator` and by the input-gradient-norm double backward of
:func:`flatplug.measures.local_flatness.gradient_norms`.

Only stock ``nn.Conv1d/2d/3d`` with ``padding_mode="zeros"`` and numeric padding are switched,
and only outside autocast; the switch is an instance attribute (``_conv_forward``) removed on
exit, so hooks, parametrisations and other modules are untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ._switch import instance_override

__all__ = ["second_order_convs"]

_STOCK = {cls: cls._conv_forward for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d)}


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, conf: tuple) -> torch.Tensor:
    stride, padding, dilation, groups = conf
    return torch.ops.aten.convolution(x, w, b, stride, padding, dilation, False, [0] * len(stride), groups)


def _conv_transposed(g_out: torch.Tensor, w: torch.Tensor, size: torch.Size, conf: tuple) -> torch.Tensor:
    """The adjoint of ``_conv(., w)`` applied to ``g_out``, cropped/padded to the input's ``size``."""
    stride, padding, dilation, groups = conf
    extra = [  # output padding that gives exactly the input's spatial size
        size[2 + i] - ((g_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + 1)
        for i in range(len(stride))
    ]
    return torch.ops.aten.convolution(g_out, w, None, stride, padding, dilation, True, extra, groups)


class _WeightGradient(torch.autograd.Function):
    """``d<g_out, conv(x, W)>/dW`` (the backends' weight-gradient kernel), with derivatives
    ``conv(x, .)`` for ``g_out`` and ``convT(g_out, .)`` for ``x``, each computed only when needed."""

    @staticmethod
    def forward(ctx, g_out, x, w, conf):  # type: ignore[override]
        ctx.save_for_backward(g_out, x)
        ctx.conf = conf
        stride, padding, dilation, groups = conf
        zeros = [0] * len(stride)
        return torch.ops.aten.convolution_backward(
            g_out, x, w, None, stride, padding, dilation, False, zeros, groups, [False, True, False]
        )[1]

    @staticmethod
    def backward(ctx, gg_w):  # type: ignore[override]
        g_out, x = ctx.saved_tensors
        d_out = _conv(x, gg_w, None, ctx.conf) if ctx.needs_input_grad[0] else None
        d_x = _conv_transposed(g_out, gg_w, x.shape, ctx.conf) if ctx.needs_input_grad[1] else None
        return d_out, d_x, None, None


class _Convolution(torch.autograd.Function):
    """``convolution(x, w, b)`` (not transposed) whose backward is recorded in ops with fast derivatives."""

    @staticmethod
    def forward(ctx, x, w, b, conf):  # type: ignore[override]
        # (forward with ctx, not setup_context: apply() then skips binding the arguments by
        # inspect.signature, 0.3 ms a call, a few % of a product; torch.func transforms are not used here)
        ctx.save_for_backward(x, w)
        ctx.conf, ctx.has_bias = conf, b is not None
        return _conv(x, w, b, conf)

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        x, w = ctx.saved_tensors
        g_in = _conv_transposed(g_out, w, x.shape, ctx.conf) if ctx.needs_input_grad[0] else None
        g_w = _WeightGradient.apply(g_out, x, w.detach(), ctx.conf) if ctx.needs_input_grad[1] else None
        g_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            g_b = g_out.sum([0] + list(range(2, g_out.dim())))
        return g_in, g_w, g_b, None


def _switchable(module: nn.Module) -> bool:
    stock = _STOCK.get(type(module))
    return (
        stock is not None
        and type(module)._conv_forward is stock
        and "_conv_forward" not in vars(module)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _forward_of(module: nn.Module):
    stride, padding, dilation = tuple(module.stride), tuple(module.padding), tuple(module.dilation)
    stock = _STOCK[type(module)]

    def conv_forward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if torch.is_autocast_enabled(input.device.type) or input.dim() != weight.dim():
            return stock(module, input, weight, bias)  # autocast casts, unbatched inputs: the stock path
        return _Convolution.apply(input, weight, bias, (stride, padding, dilation, module.groups))

    return conv_forward


@contextmanager
def second_order_convs(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s convolutions record gradient graphs with fast derivatives.

    Yields how many convolutions were switched. Graphs built inside stay valid after the block.
    """
    with instance_override([m for m in model.modules() if _switchable(m)], "_conv_forward", _forward_of) as switched:
        yield switched
