"""Resolve a ``params`` argument (names, modules or tensors) to named parameters of a model."""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence, Union

import torch
from torch import nn

ParamSpec = Union[None, str, nn.Module, torch.Tensor, Iterable[Union[str, nn.Module, torch.Tensor]]]


def select_params(model: nn.Module, params: ParamSpec = None) -> list[tuple[str, nn.Parameter]]:
    """Named parameters selected by ``params`` (default: all of the model's parameters).

    Strings name parameters (``"fc.weight"``) or modules (``"fc"``: all its parameters);
    modules and tensors are matched by identity. Order follows ``model.named_parameters()``.
    """
    named = list(model.named_parameters())
    if params is None:
        chosen = named
    else:
        items: Sequence = [params] if isinstance(params, (str, nn.Module, torch.Tensor)) else list(params)
        by_name = dict(named)
        modules = dict(model.named_modules())
        ids: set[int] = set()
        for item in items:
            if isinstance(item, str):
                if item in by_name:
                    ids.add(id(by_name[item]))
                elif item in modules and item != "":
                    ids.update(id(p) for p in modules[item].parameters())
                else:
                    close = difflib.get_close_matches(item, list(by_name) + list(modules), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise ValueError(f"params: the model has no parameter or module named {item!r}{hint}")
            elif isinstance(item, nn.Module):
                ids.update(id(p) for p in item.parameters())
            elif isinstance(item, torch.Tensor):
                if not any(item is p for _, p in named):
                    raise ValueError("params: a tensor in params is not a parameter of the model")
                ids.add(id(item))
            else:
                raise TypeError(f"params: expected names, modules or tensors, got {type(item).__name__}")
        chosen = [(n, p) for n, p in named if id(p) in ids]
    if not chosen:
        raise ValueError("params: selects no parameters; pass parameter names, modules or tensors of the model")
    return chosen
