"""What the zoo models' authors (or the benchmark that distributes them) published, and how it compares.

``published.json`` beside this module holds only numbers read in a source. Its schema::

    {"schema": 1, "retrieved": "YYYY-MM-DD", "note": str,
     "models": {<zoo model name>: {
         "status": "published" | "not_retrieved" | "not_published",
         "note": str,                                  # why there is nothing (when status is not "published")
         "checkpoint_verified": bool,                  # optional; false when the zoo file could not be matched
         "checkpoint_note": str,                       #   with the authors' checkpoint
         "entries": [{
             "kind": "clean" | "pgd" | "attack" | "autoattack" | "attack_upper_bound" | "verified",
             "value": float,            # a fraction in [0, 1]
             "norm": "linf" | "l2" | null, "eps": float | null, "eps_text": str | null,   # null for "clean"
             "method": str,             # the attack or verifier, with its settings as the source states them
             "test_set": str, "n": int | null, "subset": str,
             "representative": bool,    # the subset is the test set or an unfiltered sample of it (not, e.g.,
                                        # only correctly classified images); only then is a difference shown
             "derived": str,            # optional: how the value follows from the source (a count / total,
                                        #   1 - a reported attack success rate)
             "source": str, "url": str, "where": str,   # paper table / file, and the cell or line
             "quote": str}]}}}

Kinds: ``clean`` accuracy; ``pgd`` accuracy under PGD; ``attack`` accuracy under another named
attack; ``autoattack`` accuracy under AutoAttack; ``attack_upper_bound`` a column the source calls an
upper bound on robust accuracy (images no attack broke); ``verified`` certified accuracy, a lower
bound on robust accuracy. Attack accuracies are upper bounds on the true robust accuracy, so a
stronger attack gives a lower number; the verified figure bounds it from below.

:func:`best_robust` picks, for one threat model, the entry a reader compares with AutoAttack: the
lowest attack-based figure (the strongest attack published), else the verified lower bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PUBLISHED_FILE = Path(__file__).with_name("published.json")
KINDS = ("clean", "pgd", "attack", "autoattack", "attack_upper_bound", "verified")
STATUSES = ("published", "not_retrieved", "not_published")
ATTACK_KINDS = ("autoattack", "attack", "attack_upper_bound", "pgd")
_ENTRY_KEYS = {"kind", "value", "norm", "eps", "eps_text", "method", "test_set", "n", "subset", "representative",
               "source", "url", "where", "quote"}


@dataclass(frozen=True)
class Entry:
    """One published number (see the module docstring for the fields)."""

    model: str
    kind: str
    value: float
    norm: str | None
    eps: float | None
    eps_text: str | None
    method: str
    test_set: str
    n: int | None
    subset: str
    representative: bool
    source: str
    url: str
    where: str
    quote: str
    derived: str | None = None

    @property
    def is_lower_bound(self) -> bool:
        return self.kind == "verified"

    def short(self) -> str:
        """``PGD 93.2% (n=10000)``: the value as the leaderboard cell shows it."""
        label = {"clean": "clean", "pgd": "PGD", "attack": "attack", "autoattack": "AA",
                 "attack_upper_bound": "upper bound", "verified": "verified"}[self.kind]
        n = f", n={self.n}" if self.n else ""
        return f"{label} {100 * self.value:.1f}%{n}"


def load_published(path: str | Path = PUBLISHED_FILE) -> dict[str, dict[str, Any]]:
    """``{model: {"status", "note", "entries": [Entry, ...], ...}}`` from ``published.json``, validated."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if raw.get("schema") != 1:
        raise ValueError(f"{path}: expected schema 1, got {raw.get('schema')!r}")
    out: dict[str, dict[str, Any]] = {}
    for model, record in raw["models"].items():
        status = record.get("status")
        if status not in STATUSES:
            raise ValueError(f"{path}: model {model!r} has status {status!r}; expected one of {', '.join(STATUSES)}")
        entries = [_entry(model, e, path) for e in record.get("entries", [])]
        if (status == "published") != bool(entries):
            raise ValueError(f"{path}: model {model!r} is {status!r} but has {len(entries)} entries")
        out[model] = {**{k: v for k, v in record.items() if k != "entries"}, "entries": entries}
    return out


def _entry(model: str, e: dict[str, Any], path: Any) -> Entry:
    missing = _ENTRY_KEYS - set(e)
    if missing:
        raise ValueError(f"{path}: an entry of {model!r} lacks {sorted(missing)}")
    if e["kind"] not in KINDS:
        raise ValueError(f"{path}: an entry of {model!r} has kind {e['kind']!r}; expected one of {', '.join(KINDS)}")
    value = float(e["value"])
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: {model!r} {e['kind']} = {value}; values are fractions in [0, 1]")
    if (e["kind"] == "clean") != (e["eps"] is None):
        raise ValueError(f"{path}: {model!r} {e['kind']}: a clean accuracy has no eps, every other kind has one")
    fields = {k: e[k] for k in _ENTRY_KEYS}
    fields["value"] = value
    fields["eps"] = None if e["eps"] is None else float(e["eps"])
    return Entry(model=model, derived=e.get("derived"), **fields)


def _same_eps(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def entries_at(published: dict[str, dict[str, Any]], model: str, norm: str | None, eps: float | None) -> list[Entry]:
    """The entries of ``model`` at this threat model (``norm=None``: its clean accuracies)."""
    record = published.get(model)
    if not record:
        return []
    if norm is None:
        return [e for e in record["entries"] if e.kind == "clean"]
    return [e for e in record["entries"]
            if e.kind != "clean" and e.norm == norm and e.eps is not None and _same_eps(e.eps, float(eps))]


def best_robust(entries: list[Entry]) -> Entry | None:
    """The strongest published attack figure (lowest accuracy), else the highest verified bound.

    Representative subsets come first: an entry on a filtered subset is only used when it is all there is.
    """
    for wanted in (True, False):
        pool = [e for e in entries if e.representative is wanted]
        attacks = [e for e in pool if e.kind in ATTACK_KINDS]
        if attacks:
            return min(attacks, key=lambda e: e.value)
        verified = [e for e in pool if e.kind == "verified"]
        if verified:
            return max(verified, key=lambda e: e.value)
    return None


def difference(ours: float | None, entry: Entry | None) -> float | None:
    """``ours - published`` (a fraction), only for a representative entry and a measured value."""
    if entry is None or ours is None or not entry.representative or math.isnan(ours):
        return None
    return float(ours) - entry.value


def status_text(published: dict[str, dict[str, Any]], model: str) -> str:
    """``"not published"`` / ``"not retrieved"`` for a model with no entries ("" otherwise)."""
    record = published.get(model)
    if record is None or record["status"] == "not_published":
        return "not published"
    if record["status"] == "not_retrieved":
        return "not retrieved"
    return ""
