"""Batch-norm running statistics left untouched on extra forward passes (SAM's second pass, AWP's ascent).

The convention of SAM's reference PyTorch implementation (davda54/sam, ``disable_running_stats``,
for Foret et al. 2021, https://arxiv.org/abs/2010.01412) and of AWP's proxy model (Wu et al.
2020, https://arxiv.org/abs/2004.05884): the extra pass normalises with batch statistics but
the model's running statistics see each batch once.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm in train mode still normalises with batch statistics but updates no buffers."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True
