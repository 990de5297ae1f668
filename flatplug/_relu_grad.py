"""ReLUs whose recorded gradient has no dead derivative path, for double backward.

The derivative of ``relu`` is a step function, whose own derivative is zero wherever it exists.
Stock autograd still records the first-order gradient ``threshold_backward(g, out, 0)`` with the
ReLU's output as a differentiable input, so every backward pass through that gradient graph (a
Hessian-vector product, or the input-gradient-norm ascent of LFR) computes a ``zeros_like`` for
it (``ThresholdBackwardBackward0``) and adds those zeros into the forward graph. On a CPU that
work took 1% to 7.5% of a product's time on ``resnet4b`` in ``torch.profiler`` runs (more when
the allocator hands the zeros fresh pages); ``benchmarks/relu_graph.py`` measured products with
the switch at 0.986x-0.991x the stock ReLUs' time on ``resnet4b``, 0.99x-1.00x on ``oval_wide``,
and 1.04x-1.05x on WideResNet-28-10 (in-place ReLUs, batch 4).

:func:`second_order_relus` records the same gradient with the output detached from the graph
(it still guards against later in-place changes: the saved tensor shares the output's version
counter), so the zero branch is never built. The function, the gradient and every second
derivative are the same bit for bit: the branch removed only ever carried zeros.

Only modules of type exactly ``nn.ReLU`` are switched (in place or not), through an instance
attribute ``forward`` removed on exit; ``F.relu`` calls, subclasses and modules whose ``forward``
is already overridden on the instance are left alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["second_order_relus"]


class _ReLU(torch.autograd.Function):
    """``relu(x)``, whose backward ``threshold_backward(g, out, 0)`` depends on ``g`` alone."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        out = torch.relu(x)
        ctx.save_for_backward(out.detach())
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g, out, 0)


class _ReLUInPlace(torch.autograd.Function):
    """``x.relu_()``, as :class:`_ReLU` (the input is marked dirty, as stock ``relu_`` leaves it)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x.detach())
        return x

    backward = _ReLU.backward


def _forward_of(module: nn.ReLU):
    fn = _ReLUInPlace if module.inplace else _ReLU

    def forward(input: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not input.requires_grad:
            return torch.relu_(input) if module.inplace else torch.relu(input)
        return fn.apply(input)

    return forward


@contextmanager
def second_order_relus(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s ``nn.ReLU`` modules record gradients without the dead branch.

    Yields how many were switched. Graphs built inside stay valid after the block.
    """
    switched = [m for m in model.modules() if type(m) is nn.ReLU and "forward" not in vars(m)]
    for m in switched:
        m.forward = _forward_of(m)  # type: ignore[method-assign]
    try:
        yield len(switched)
    finally:
        for m in switched:
            vars(m).pop("forward", None)
