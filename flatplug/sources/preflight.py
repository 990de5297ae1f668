"""Before a run: the models a source cannot load as things stand, said once for all of them.

``flatplug score`` and ``flatplug leaderboard`` ask ``source.check(name)`` (optional, see
:class:`flatplug.types.ModelSource`) for every model before the first is scored, and refuse the
run with one message that describes the first few problems in full and names the rest.
"""

from __future__ import annotations

from typing import Any

#: how many unloadable models a pre-flight message describes in full (the rest by name)
SHOWN_PROBLEMS = 5


def unloadable(source: Any, names: list[str]) -> list[tuple[str, str]]:
    """``(name, what is wrong)`` for each of ``names`` whose ``source.check`` raises; [] when the
    source offers no ``check``."""
    check = getattr(source, "check", None)
    if not callable(check):
        return []
    problems: list[tuple[str, str]] = []
    for name in names:
        try:
            check(name)
        except (OSError, LookupError, ValueError) as exc:
            problems.append((name, str(exc).strip() or type(exc).__name__))
    return problems


def describe(problems: list[tuple[str, str]]) -> str:
    """The first :data:`SHOWN_PROBLEMS` problems in full, then the other models by name."""
    text = " | ".join(what for _, what in problems[:SHOWN_PROBLEMS])
    if len(problems) > SHOWN_PROBLEMS:
        text += f" | and the same for {', '.join(name for name, _ in problems[SHOWN_PROBLEMS:])}"
    return text
