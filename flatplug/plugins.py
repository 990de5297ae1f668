"""Plugin manager: built-ins and entry-point plugins, loaded lazily, looked up by name.

Built-in plugins are loaded through the same function as third-party entry points
(group ``flatplug``), so they obey the same rules: a plugin that fails to import is
skipped with a warning, ``FLATPLUG_DISABLE_PLUGINS=a,b`` blocks plugins by name, and
two plugins registering the same name is an error naming both.
"""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicatePluginError, PluginWarning, UnknownPluginError
from .registry import PluginInfo, make_info

ENTRY_POINT_GROUP = "flatplug"
KINDS = ("measures", "attacks", "trainers", "sources", "datasets", "executors")
#: (plugin name, module) of the built-ins, registered like entry points.
BUILTIN_PLUGINS = (("flatplug", "flatplug.builtin"),)


@dataclass(frozen=True)
class Registered:
    """One registered object: its name, kind, the plugin that registered it, that plugin's version,
    and what the plugin declared about it (``info``: a :class:`~flatplug.ext.MeasureInfo` for
    measures, an :class:`~flatplug.ext.AttackInfo` for attacks, a ``PluginInfo`` otherwise)."""

    name: str
    kind: str
    obj: Any
    plugin: str
    version: str
    info: PluginInfo = PluginInfo()


def _version_of(module_name: str) -> str:
    """The version of the distribution that provides ``module_name``'s top-level package: looked
    up by name first (``packages_distributions()`` reads every installed distribution's file
    list, about 0.3 s, paid only when the package and distribution names differ)."""
    top = module_name.split(".")[0]
    try:
        return metadata.version(top)
    except Exception:  # PackageNotFoundError (the names differ), or broken metadata
        pass
    try:
        for dist in metadata.packages_distributions().get(top, []):
            return metadata.version(dist)
    except Exception:  # pragma: no cover - broken metadata
        pass
    return getattr(importlib.import_module(top), "__version__", "unknown")


def disabled_plugins() -> set[str]:
    """Plugin names listed in ``FLATPLUG_DISABLE_PLUGINS`` (comma separated)."""
    raw = os.environ.get("FLATPLUG_DISABLE_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


class Plugins:
    """A pluggy manager plus the per-kind registries built from its hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("flatplug")
        self.pm.add_hookspecs(hookspecs)
        self.versions: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self._registries: dict[str, dict[str, Registered]] = {}
        self._loaded = False

    # -- loading ---------------------------------------------------------
    def _load_plugin(self, name: str, loader, version: str) -> None:
        if name in disabled_plugins() or self.pm.has_plugin(name):
            return
        try:
            module = loader()
            self.pm.register(module, name=name)
        except Exception as exc:  # a broken plugin must not break the rest
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"flatplug: plugin {name!r} failed to load and is skipped ({type(exc).__name__}: {exc}); "
                f"fix or uninstall it, or set FLATPLUG_DISABLE_PLUGINS={name}",
                PluginWarning,
                stacklevel=3,
            )
            return
        self.versions[name] = version

    def load(self) -> None:
        """Load built-ins, then every entry point in group ``flatplug`` (once)."""
        if self._loaded:
            return
        self._loaded = True
        for name, module_name in BUILTIN_PLUGINS:
            self._load_plugin(name, lambda m=module_name: importlib.import_module(m), _version_of(module_name))
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            version = dist.version if dist is not None else "unknown"
            self._load_plugin(ep.name, ep.load, version)

    def register(self, module: object, name: str, version: str = "unknown") -> None:
        """Register an in-process plugin object (a module or class with hookimpls)."""
        self.load()
        self._load_plugin(name, lambda: module, version)
        self._registries.clear()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._registries.clear()

    # -- registries ------------------------------------------------------
    def registry(self, kind: str) -> dict[str, Registered]:
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        self.load()
        if kind not in self._registries:
            table: dict[str, Registered] = {}
            hook = getattr(self.pm.hook, f"flatplug_register_{kind}")
            for impl in reversed(hook.get_hookimpls()):  # registration order
                plugin = impl.plugin_name

                def register(name: str, obj: Any, _plugin: str = plugin, *, info: PluginInfo | None = None,
                             **fields: Any) -> None:
                    if not isinstance(name, str) or not name:
                        raise ValueError(f"plugin {_plugin!r} registered a {kind[:-1]} with an invalid name {name!r}")
                    if name in table:
                        raise DuplicatePluginError(
                            f"{kind[:-1]} {name!r} is registered by two plugins: {table[name].plugin!r} and "
                            f"{_plugin!r}; uninstall one or disable it with FLATPLUG_DISABLE_PLUGINS={_plugin}"
                        )
                    record = make_info(kind, _plugin, name, info, fields)
                    table[name] = Registered(name, kind, obj, _plugin, self.versions.get(_plugin, "unknown"), record)

                impl.function(register=register)
            self._registries[kind] = table
        return self._registries[kind]

    def get(self, kind: str, name: str) -> Any:
        return self.record(kind, name).obj

    def record(self, kind: str, name: str) -> Registered:
        """The :class:`Registered` record of ``name``; unknown names list the available ones."""
        table = self.registry(kind)
        if name in table:
            return table[name]
        close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownPluginError(
            f"unknown {kind[:-1]} {name!r}.{hint} Available {kind}: {', '.join(sorted(table)) or '(none)'}"
        )


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin manager (created on first use)."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins


def reset() -> None:
    """Forget loaded plugins; the next lookup reloads them (tests, changed environment)."""
    global _plugins
    _plugins = None


def list_plugins(kind: str) -> list[str]:
    """Sorted names registered for ``kind`` (``"measures"``, ``"attacks"``, ``"trainers"``, ...)."""
    return sorted(get_plugins().registry(kind))


def get(kind: str, name: str) -> Any:
    """The object registered as ``name`` for ``kind``; unknown names list the available ones."""
    return get_plugins().get(kind, name)


def record(kind: str, name: str) -> Registered:
    """The :class:`Registered` record of ``name`` (object, plugin, version and declared ``info``)."""
    return get_plugins().record(kind, name)


def info(kind: str, name: str) -> PluginInfo:
    """What the plugin declared about ``name`` (a :class:`~flatplug.ext.MeasureInfo` for a measure)."""
    return get_plugins().record(kind, name).info


def all_registered() -> list[Registered]:
    """Every registered object of every kind."""
    plugins = get_plugins()
    return [r for kind in KINDS for r in sorted(plugins.registry(kind).values(), key=lambda r: r.name)]
