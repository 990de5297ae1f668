"""Run a measure in eval mode and leave the model exactly as it was found."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; each submodule's own mode restored after (a layer the
    user froze in eval mode inside a training model stays frozen, where ``model.train()`` would
    unfreeze it)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def preserved(model: nn.Module, *, weights: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore modes, ``requires_grad``, grads and hooks on exit.

    With ``weights=True`` parameters and buffers are snapshot and copied back, for
    measures that perturb weights in place (sharpness, weight-space landscapes).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    hooks = [(m, name, set(getattr(m, name, {}).keys())) for m in model.modules() for name in _HOOK_DICTS]
    snapshot = None
    if weights:
        snapshot = [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]
    with eval_mode(model):  # modes: each submodule's own, restored last
        try:
            yield model
        finally:
            if snapshot is not None:
                with torch.no_grad():
                    for t, saved in zip(list(model.parameters()) + list(model.buffers()), snapshot):
                        t.copy_(saved)
            for p, req, g in zip(params, requires, grads):
                p.requires_grad_(req)
                p.grad = g
            for m, name, keys in hooks:
                d = getattr(m, name, None)
                if d is not None:
                    for k in [k for k in d.keys() if k not in keys]:
                        del d[k]
