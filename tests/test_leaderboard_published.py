"""published.json: every zoo model accounted for, every number traceable to the quotation beside it."""

from __future__ import annotations

import json
import math
import re

import pytest

from conftest import shared_path
from flatplug.leaderboard.published import (PUBLISHED_FILE, Entry, best_robust, difference, entries_at,
                                            load_published)


def _numbers(text: str) -> set[float]:
    return {float(t) for t in re.findall(r"\d+(?:\.\d+)?", text)}


def test_every_zoo_model_has_a_record():
    """A model missing from published.json would show as "not published" without anyone having looked."""
    zoo = json.loads(shared_path("models", "zoo.json").read_text())
    published = load_published()
    assert set(published) == set(zoo)


def test_each_value_appears_in_its_quotation():
    """Guards against a mistyped number: the value (as a percentage, a count of ``n``, or 100 - a reported
    attack success rate) must be readable in the quoted table cell or line, and point to a real URL."""
    published = load_published()
    for model, record in published.items():
        if record["status"] != "published":
            assert record["entries"] == [] and record.get("note"), model
            continue
        for e in record["entries"]:
            assert e.url.startswith("https://") and e.quote and e.where, (model, e.kind)
            found = _numbers(e.quote)
            pct = round(100 * e.value, 2)
            candidates = {pct, round(100 - pct, 2)}
            if e.n:
                candidates.add(round(e.value * e.n))
            if e.derived and "6314" in e.derived:
                candidates.add(6314.0)
            assert any(any(math.isclose(c, f, abs_tol=1e-6) for f in found) for c in candidates), \
                (model, e.kind, e.value, e.quote)


def test_threat_models_and_kinds_are_consistent():
    """A clean accuracy has no eps; robust figures carry norm and eps; SDP and ERAN subsets say their size."""
    for model, record in load_published().items():
        for e in record["entries"]:
            if e.kind == "clean":
                assert e.norm is None and e.eps is None
            else:
                assert e.norm in ("linf", "l2") and e.eps and 0 < e.eps < 1
            if "first 1000" in e.subset:
                assert e.n == 1000
            if "200 test images" in e.subset:
                assert e.n == 200


def _entry(kind: str, value: float, representative: bool = True) -> Entry:
    return Entry(model="m", kind=kind, value=value, norm="linf", eps=0.3, eps_text="0.3", method="", test_set="",
                 n=100, subset="", representative=representative, source="s", url="https://x", where="", quote="")


def test_best_robust_prefers_the_strongest_attack_then_the_verified_bound():
    """The strongest attack is the lowest attack accuracy; a verified bound is used only without attacks;
    a filtered-subset entry only when nothing representative exists, and never gets a difference."""
    pgd, square, verified = _entry("pgd", 0.96), _entry("attack", 0.92), _entry("verified", 0.80)
    assert best_robust([pgd, square, verified]) is square
    assert best_robust([verified, _entry("verified", 0.7)]) is verified
    filtered = _entry("attack_upper_bound", 0.5, representative=False)
    assert best_robust([filtered, verified]) is verified
    assert best_robust([filtered]) is filtered
    assert difference(0.9, square) == pytest.approx(-0.02)
    assert difference(0.9, filtered) is None and difference(float("nan"), square) is None


def test_entries_at_matches_the_threat_model():
    """Entries are found by norm and eps (2/255 stored as a float), clean ones with norm None."""
    published = load_published()
    robust = entries_at(published, "resnet2b", "linf", 2 / 255)
    assert {e.kind for e in robust} == {"pgd", "verified"} and all(e.eps_text == "2/255" for e in robust)
    assert [e.value for e in entries_at(published, "resnet2b", None, None)] == [0.6925]
    assert entries_at(published, "resnet2b", "linf", 8 / 255) == []
    assert entries_at(published, "oval_base", "linf", 2 / 255) == []


def test_file_is_strict_json():
    json.loads(PUBLISHED_FILE.read_text(encoding="utf-8"))
