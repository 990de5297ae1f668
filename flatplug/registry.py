"""What a plugin declares when it registers an object, beyond the object itself.

``register(name, obj, **info)``: the keywords build the kind's info record (a measure's
:class:`MeasureInfo`, an attack's :class:`AttackInfo`, a :class:`PluginInfo` for the other kinds),
or pass a ready one as ``register(name, obj, info=MeasureInfo(...))``. Scoring reads these
records, so it never names a measure: a third-party measure gets exactly what a built-in gets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

__all__ = ["AttackInfo", "ForwardPass", "MeasureInfo", "PluginInfo", "make_info"]


@dataclass(frozen=True)
class PluginInfo:
    """``version``: the object's implementation version (bump it when its results change)."""

    version: str = "1"
    paper: str = ""


@dataclass(frozen=True)
class ForwardPass:
    """One full-precision forward pass over the scoring data, shared by clean accuracy and the measures.

    ``logits`` ``[N, K]`` and labels ``y`` ``[N]``; ``features``: the inputs ``phi`` ``[N, d]`` of
    ``layer``, the model's last ``nn.Linear`` (``None`` when the model does not end in one, i.e. when
    that layer does not produce the logits); ``layer_name``: its name in the model.
    """

    logits: torch.Tensor
    y: torch.Tensor
    features: torch.Tensor | None = None
    layer: nn.Linear | None = None
    layer_name: str | None = None

    def penultimate(self, measure: str) -> tuple[torch.Tensor, torch.Tensor, nn.Linear, str]:
        """``(features, y, layer, layer_name)`` for ``measure``, which needs the inputs of the layer that
        produces the logits; a clear error when this model does not end in an ``nn.Linear``."""
        if self.features is None or self.layer is None:
            raise ValueError(f"{measure} needs the features of the layer that produces the logits; "
                             "the shared forward pass has none for this model")
        return self.features, self.y, self.layer, self.layer_name or ""


@dataclass(frozen=True)
class MeasureInfo(PluginInfo):
    """What scoring needs to know about a measure.

    * ``version``: implementation version, part of every stored row's key (bump it when the
      measure's numbers change, so stores never return a stale value);
    * ``default``: scored by ``fp.score`` / ``flatplug score`` when no measures are named;
    * ``zoo_defaults``: parameters scoring uses when the caller gives none (settings suited to a zoo);
    * ``follows_attack``: settings taken from the run's attack unless given (e.g. ``("eps", "norm")``
      for an input-space measure, so it measures the ball the attack searches);
    * ``from_forward`` and ``forward_params``: ``from_forward(forward: ForwardPass, **params) ->
      Measurement`` computes the measure from scoring's shared forward pass (no second pass over
      the data) when every given parameter is in ``forward_params`` and ``forward.features`` exists;
    * ``check``: ``check(**settings)`` raises ``ValueError``/``TypeError`` for a bad setting without
      touching a model or data; scoring calls it with the settings it names (the measure's defaults
      filled in) before the first model is loaded, so a bad value is refused before any work;
    * ``paper``: the reference (a citation or link) shown by ``flatplug plugins``.
    """

    default: bool = False
    zoo_defaults: Mapping[str, Any] = field(default_factory=dict)
    follows_attack: tuple[str, ...] = ()
    from_forward: Callable[..., Any] | None = None
    forward_params: frozenset[str] = frozenset()
    check: Callable[..., None] | None = None


@dataclass(frozen=True)
class AttackInfo(PluginInfo):
    """What scoring needs to know about an attack: its implementation ``version`` and ``paper``."""


_INFO_TYPES: dict[str, type[PluginInfo]] = {"measures": MeasureInfo, "attacks": AttackInfo}


def make_info(kind: str, plugin: str, name: str, info: PluginInfo | None, fields: dict[str, Any]) -> PluginInfo:
    """The info record of one registration; unknown keywords are an error naming the plugin."""
    cls = _INFO_TYPES.get(kind, PluginInfo)
    if info is not None:
        if fields:
            raise TypeError(f"plugin {plugin!r} registered {kind[:-1]} {name!r} with info= and keywords "
                            f"{sorted(fields)}; pass one or the other")
        if not isinstance(info, cls):
            raise TypeError(f"plugin {plugin!r} registered {kind[:-1]} {name!r} with info of type "
                            f"{type(info).__name__}; expected flatplug.ext.{cls.__name__}")
        return info
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"plugin {plugin!r} registered {kind[:-1]} {name!r} with unknown keywords {unknown}; "
                        f"a {kind[:-1]} accepts {', '.join(sorted(known))}")
    fields = dict(fields)
    if "version" in fields:
        fields["version"] = str(fields["version"])
    if "follows_attack" in fields:
        fields["follows_attack"] = tuple(fields["follows_attack"])
    if "forward_params" in fields:
        fields["forward_params"] = frozenset(fields["forward_params"])
    if "zoo_defaults" in fields:
        fields["zoo_defaults"] = dict(fields["zoo_defaults"])
    return cls(**fields)
