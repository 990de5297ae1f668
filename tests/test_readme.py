"""Every Python snippet of README.md runs as written (issue 11 section 4).

The snippets use the real zoo and CIFAR-10 under ``../shared`` by relative paths, as a user in the
project root would; each runs in a fresh namespace in a scratch folder beside a link to the shared
data, so the stores and reports it writes stay out of the checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_snippets(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced ```python block."""
    out = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        out.append((text[: match.start()].count("\n") + 1, match.group(1)))
    return out


SNIPPETS = python_snippets(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_snippets():
    """Guards against the extraction silently finding nothing (then every snippet test would pass vacuously)."""
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("line, code", SNIPPETS, ids=[f"README.md:{line}" for line, _ in SNIPPETS])
def test_readme_snippet_runs_as_written(line, code, tmp_path, monkeypatch):
    """Guards against README examples that use undefined names or a changed API (issue 11: snippets used
    `model`, `x`, `loader` that were never defined)."""
    shared = shared_path()
    work = tmp_path / "project"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared, target_is_directory=True)
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": f"readme_line_{line}"}
    from flatplug import plugins

    try:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code
    finally:
        plugins.reset()  # a snippet that registers a plugin must not leak it into later tests
