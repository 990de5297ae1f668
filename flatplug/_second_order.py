"""The layers whose gradient graphs flatplug records for fast differentiation, switched together.

Used wherever a first-order gradient is built to be differentiated again: the Hessian operator's
graph (:class:`flatplug.hvp.HessianOperator`) and the input-gradient norm of LFR and local flatness
(:func:`flatplug.measures.local_flatness.gradient_norms`). Each switch computes the same function
and, to float rounding, the same derivatives as stock autograd: see
:mod:`flatplug._conv_grad` (convolutions) and :mod:`flatplug._bn_grad` (eval-mode BatchNorm).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ._bn_grad import second_order_batchnorms
from ._conv_grad import second_order_convs

__all__ = ["second_order_layers"]


@contextmanager
def second_order_layers(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s convolutions and eval-mode BatchNorm layers record gradient
    graphs with fast derivatives. Yields how many layers were switched."""
    with second_order_convs(model) as convs, second_order_batchnorms(model) as norms:
        yield convs + norms
