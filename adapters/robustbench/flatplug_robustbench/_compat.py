"""Importing robustbench 1.1.1 in a current environment.

robustbench's ``eval`` module does ``from autoattack import AutoAttack`` and ``from autoattack.state
import EvaluationState`` in its GitHub sources (in the 1.1.1 wheel on PyPI those lines are
commented out), but its declared dependency ``pyautoattack`` installs the same code as the module
``pyautoattack``; and its ``loaders`` module imports ``pkg_resources``, which setuptools 81 removed
(hence ``setuptools<81`` in this distribution's dependencies). ``import_robustbench()``
makes ``autoattack`` an alias of ``pyautoattack`` (unless a real ``autoattack`` is installed) and
imports robustbench with its known import-time deprecation warnings silenced. It is called lazily,
on the first load or listing, so that loading flatplug's plugins stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType

_IMPORT_WARNINGS = (
    (UserWarning, r"pkg_resources is deprecated"),
    (DeprecationWarning, r".*pkg_resources"),
    (FutureWarning, r"`torch\.jit\.interface` is deprecated"),
    (UserWarning, r"Overwriting .* in registry"),  # timm, when robustbench registers its models
    (DeprecationWarning, r"Importing from timm\.models\.\w+ is deprecated"),  # robustbench's old timm imports
)


def alias_autoattack() -> ModuleType:
    """Make ``import autoattack`` (and ``autoattack.<sub>``) give the installed ``pyautoattack``.

    A genuine ``autoattack`` distribution (the GitHub package) wins when it is installed. Returns
    the module that ``autoattack`` now names.
    """
    existing = sys.modules.get("autoattack")
    if existing is not None:
        return existing
    try:
        real = importlib.util.find_spec("autoattack")
    except (ImportError, ValueError):
        real = None
    if real is not None:
        return importlib.import_module("autoattack")
    try:
        package = importlib.import_module("pyautoattack")
        importlib.import_module("pyautoattack.state")  # robustbench.eval imports autoattack.state
    except ImportError as exc:
        raise ImportError(
            "robustbench imports the module 'autoattack', which the package 'pyautoattack' provides; "
            "neither is importable here. Install it with: pip install pyautoattack"
        ) from exc
    sys.modules["autoattack"] = package
    for name, module in list(sys.modules.items()):
        if name.startswith("pyautoattack."):
            sys.modules.setdefault("autoattack." + name[len("pyautoattack."):], module)
    return package


def import_robustbench() -> ModuleType:
    """``import robustbench`` (with ``robustbench.utils``, ``.data``, ``.model_zoo``), working around
    its ``autoattack`` import and quieting its import-time deprecation warnings."""
    if "robustbench.utils" in sys.modules and "robustbench.data" in sys.modules:
        return sys.modules["robustbench"]
    alias_autoattack()
    with warnings.catch_warnings():
        for category, message in _IMPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        try:
            module = importlib.import_module("robustbench")
            importlib.import_module("robustbench.utils")
            importlib.import_module("robustbench.data")
            importlib.import_module("robustbench.model_zoo")
        except ModuleNotFoundError as exc:
            if exc.name == "pkg_resources":
                raise ImportError(
                    "robustbench 1.1.1 needs pkg_resources, which setuptools 81 removed; "
                    "install setuptools<81 (pip install 'setuptools<81')"
                ) from exc
            raise
    return module
