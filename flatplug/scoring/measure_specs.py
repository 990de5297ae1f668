"""Which measures a scoring run computes, with what settings: all read from each measure's ``MeasureInfo``."""

from __future__ import annotations

from typing import Any

from .. import plugins
from .attack_specs import threat_norm


def default_measures() -> list[str]:
    """The registered measures that declare ``default=True``: scored when none are named."""
    return [n for n in plugins.list_plugins("measures") if getattr(plugins.info("measures", n), "default", False)]


def measure_version(name: str) -> str:
    """``plugin:version`` of measure ``name`` (part of every stored row's key)."""
    record = plugins.record("measures", name)
    return f"{record.plugin}:{record.info.version}"


def resolve_measures(measures: Any, attack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: params}`` with each measure's declared zoo defaults and the attack settings it follows."""
    if measures is None:
        chosen = {name: {} for name in default_measures()}
    elif isinstance(measures, dict):
        chosen = {k: dict(v or {}) for k, v in measures.items()}
    elif isinstance(measures, str):
        chosen = {measures: {}}
    else:
        chosen = {}
        for item in measures:
            name, params = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
            chosen[name] = params
    follow = {"eps": attack.get("eps"), "norm": threat_norm(attack)}
    for name, params in chosen.items():
        info = plugins.info("measures", name)  # unknown names fail before any work, with the closest match
        for key, value in getattr(info, "zoo_defaults", {}).items():
            params.setdefault(key, value)
        for key in getattr(info, "follows_attack", ()):
            value = attack.get(key, follow.get(key))
            if value is not None:
                params.setdefault(key, value)
    return chosen


def measure_parameters(name: str) -> tuple[str, ...] | None:
    """The keyword parameters measure ``name`` accepts after ``(model, data)``; None when it takes ``**params``."""
    import inspect

    fn = plugins.get("measures", name)
    try:
        params = list(inspect.signature(fn).parameters.values())[2:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "quiet")


def check_measures(chosen: dict[str, dict[str, Any]]) -> None:
    """Refuse, before any work, a parameter a measure does not take (naming what it takes) and a bad value.

    Values are checked by the ``check`` the measure declares in its ``MeasureInfo``, called with the
    settings it names: the given ones, the rest the measure's own defaults. A measure that declares
    none is checked only when it runs.
    """
    for name, params in chosen.items():
        accepted = measure_parameters(name)
        if accepted is not None:
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                import difflib

                close = [c for u in unknown for c in difflib.get_close_matches(u, accepted, n=1)]
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"measure {name!r} takes no parameter {', '.join(map(repr, unknown))}.{hint} "
                                 f"It accepts: {', '.join(accepted) or '(none)'}")
        check = getattr(plugins.info("measures", name), "check", None)
        if check is not None:
            try:
                check(**_settings_for(check, name, params))
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"measure {name!r}: {exc}") from exc


def _settings_for(check: Any, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The settings ``check`` names: from ``params``, else the measure's default for them."""
    import inspect

    defaults = {}
    try:
        for p in inspect.signature(plugins.get("measures", name)).parameters.values():
            if p.default is not p.empty:
                defaults[p.name] = p.default
    except (TypeError, ValueError):
        pass
    wanted = inspect.signature(check).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in wanted):
        return {**defaults, **params}
    settings = {}
    for p in wanted:
        if p.name in params:
            settings[p.name] = params[p.name]
        elif p.name in defaults:
            settings[p.name] = defaults[p.name]
        elif p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise ValueError(f"{p.name}: the measure has no default for it; pass a value")
    return settings


def takes_quiet(name: str) -> bool:
    """Whether measure ``name`` accepts ``quiet=`` (scoring silences the progress bars of those that do)."""
    import inspect

    try:
        params = inspect.signature(plugins.get("measures", name)).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "quiet" or p.kind is p.VAR_KEYWORD for p in params)
