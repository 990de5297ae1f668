"""Batch normalisation in eval mode, recorded so that its gradient graph is cheap to differentiate.

In eval mode a BatchNorm layer is a per-channel affine map, ``y = (x - mean) * invstd * w + b``
with the running statistics. Stock autograd records its first-order gradient as one
``native_batch_norm_backward`` node, whose own derivative (``batchnorm_double_backward``) is
written for the general (train-mode) case in reductions and broadcasts. Some of those produce
tensors in the default (NCHW) layout whatever the activations' layout is, so on channels_last
activations (flatplug's CPU policy, and GPU scoring's) every later operation of the double
backward mixes layouts: oneDNN then reorders or takes its slow path. :func:`second_order_batchnorms`
records the same first-order gradient in plain elementwise products and sums
(``g * w * invstd`` for the input, ``sum(g * (x - mean) * invstd)`` for the weight, ``sum(g)`` for
the bias), whose derivatives keep the activations' layout. The forward is stock ``F.batch_norm``
(bit-identical output); gradients and Hessian-vector products agree with the stock graph to float
rounding (tested against dense Hessians). On a WideResNet-16-4 (batch 32, CPU, one thread) a
product took 0.83x the time with it (``benchmarks/hvp_cost.py --models wrn-16-4 --wrn-n 32``, its
"BatchNorm graph stock" row) and ``local_flatness`` 0.8-0.9x (``benchmarks/batchnorm_graph.py``).

Only modules whose forward is ``_BatchNorm.forward`` itself (BatchNorm1d/2d/3d, not SyncBatchNorm,
lazy modules or subclasses that override it) with running statistics are switched, and each call
takes the stock path when the module is in train mode (batch statistics: a different function of
the inputs), under autocast, or when the input's dtype differs from the statistics'. The switch
is an instance attribute (``forward``) removed on exit, so hooks still run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from ._switch import instance_override

__all__ = ["second_order_batchnorms"]


class _BatchNormEval(torch.autograd.Function):
    """Eval-mode ``F.batch_norm`` whose backward is recorded in elementwise products and sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):  # type: ignore[override]
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, weight, mean, var = ctx.saved_tensors
        g = g.contiguous(memory_format=_layout(x))  # as the stock backward: the gradient in the input's layout
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        invstd = torch.rsqrt(var + ctx.eps)
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = g * (invstd if weight is None else weight * invstd).view(shape)
        if ctx.needs_input_grad[1]:
            g_w = (g * ((x - mean.view(shape)) * invstd.view(shape))).sum(dims)
        if ctx.needs_input_grad[2]:
            g_b = g.sum(dims)
        return g_x, g_w, g_b, None, None, None


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is in (channels_last, channels_last_3d or the default)."""
    if x.is_contiguous():
        return torch.contiguous_format
    for fmt, dim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == dim and x.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


def _switchable(module: nn.Module) -> bool:
    return (
        isinstance(module, _BatchNorm)
        and type(module).forward is _BatchNorm.forward
        and not isinstance(module, LazyModuleMixin)
        and "forward" not in vars(module)
        and module.running_mean is not None
        and module.running_var is not None
    )


def _forward_of(module: _BatchNorm):
    stock = type(module).forward

    def forward(input: torch.Tensor) -> torch.Tensor:
        if (
            module.training
            or torch.is_autocast_enabled(input.device.type)
            or input.dtype != module.running_var.dtype
        ):
            return stock(module, input)
        module._check_input_dim(input)
        return _BatchNormEval.apply(input, module.weight, module.bias, module.running_mean, module.running_var,
                                    module.eps)

    return forward


@contextmanager
def second_order_batchnorms(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s BatchNorm layers in eval mode record gradient graphs whose
    derivatives keep the activations' layout. Yields how many layers were switched. Graphs built
    inside stay valid after the block."""
    with instance_override([m for m in model.modules() if _switchable(m)], "forward", _forward_of) as switched:
        yield switched
