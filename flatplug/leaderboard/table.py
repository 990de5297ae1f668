"""The leaderboard table: one row per (threat model, model), RobustBench-style, from the run's rows.

Columns: accuracies with binomial standard errors ``sqrt(p (1 - p) / n)``; the measures and the
seconds each took; the published figure at this threat model with ``ours - published``; and
``masking``, set when PGD accuracy exceeds AutoAttack accuracy by more than ``LEADERBOARD_MASKING_MARGIN``
and by more than two standard errors of the difference (a stronger attack finding much more than
PGD is the signature of gradient masking: the flatness measures of such a model describe masked
gradients, not robustness). The standard error of the difference is the independent-samples one,
``sqrt(p1 q1 / n + p2 q2 / n)``; both attacks run on the same images, whose outcomes are positively
correlated, so it overstates the paired error (by 3-4x where AutoAttack's robust images are a
subset of PGD's) and the rule flags fewer models: in practice a threshold of 4-6 pp, not a test.
It is the leaderboard's own rule; scoring's ``gradient_masking`` check
(:mod:`flatplug.scoring.masking`) compares the first attack with a stronger one at a fixed 10 pp.
Rows are sorted by AutoAttack accuracy, then clean accuracy, highest first, as RobustBench ranks
its leaderboard.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..scoring import resolve_attack, resolve_measures
from ..store import canonical_params
from .plan import Plan, ThreatModel, autoattack, model_measures, pgd_attack, robust_sharpness, threat_measures, \
    worst_sharpness
from .published import best_robust, difference, entries_at, status_text

LEADERBOARD_MASKING_MARGIN = 0.02
#: leaderboard column -> (measure name, params builder); the builders take the threat model
MEASURE_COLUMNS: dict[str, tuple[str, Any]] = {
    "relative_flatness_mean": ("relative_flatness", lambda tm: model_measures()["relative_flatness"]),
    "hessian_max_eigenvalue": ("hessian_eigenvalues", lambda tm: model_measures()["hessian_eigenvalues"]),
    "hessian_trace": ("hessian_trace", lambda tm: model_measures()["hessian_trace"]),
    "local_flatness": ("local_flatness", lambda tm: threat_measures(tm)["local_flatness"]),
    "sharpness_average": ("sharpness", lambda tm: model_measures()["sharpness"]),
    "sharpness_worst": ("sharpness", lambda tm: worst_sharpness()),
    "sharpness_robust": ("sharpness", robust_sharpness),
}
#: every measure column of the table, in display order (the median is computed by the run)
MEASURES = ["relative_flatness_mean", "relative_flatness_median",
            *[c for c in MEASURE_COLUMNS if c != "relative_flatness_mean"]]


def standard_error(p: float, n: int | None) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    if n is None or n <= 0 or p is None or math.isnan(p):
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)


def masking(pgd: float, aa: float, n: int | None) -> bool:
    """PGD accuracy above AutoAttack accuracy by more than the margin and two standard errors."""
    if any(v is None or math.isnan(v) for v in (pgd, aa)) or not n:
        return False
    se = math.sqrt(pgd * (1 - pgd) / n + aa * (1 - aa) / n)
    return pgd - aa > max(LEADERBOARD_MASKING_MARGIN, 2 * se)


def _key(kind: str, name: str, params: dict[str, Any]) -> tuple[str, str, str]:
    return kind, name, canonical_params(params)


def attack_key(spec: dict[str, Any]) -> tuple[str, str, str]:
    spec = resolve_attack(spec)
    return _key("attack", spec["name"], {k: v for k, v in spec.items() if k != "name"})


def measure_key(tm: ThreatModel, name: str, params: dict[str, Any]) -> tuple[str, str, str]:
    resolved = resolve_measures({name: dict(params)}, resolve_attack(pgd_attack(tm)))[name]
    return _key("measure", name, resolved)


def _index(frame) -> dict[tuple[str, tuple[str, str, str]], dict[str, Any]]:
    """``(model, (kind, name, params)) -> row`` for the rows of the run."""
    out = {}
    for row in frame.to_dict("records"):
        params = row["params"] if isinstance(row["params"], str) else canonical_params(row["params"])
        params = canonical_params(json.loads(params))
        details = row.get("details")
        row["details"] = json.loads(details) if isinstance(details, str) else (details or {})
        out[(row["model"], (row["kind"], row["name"], params))] = row
    return out


def _value(row: dict[str, Any] | None) -> tuple[float, float, str]:
    """(value, seconds, error) of a row; NaN when absent or failed."""
    if row is None:
        return math.nan, math.nan, "not scored"
    secs = row.get("seconds")
    secs = math.nan if secs is None or (isinstance(secs, float) and math.isnan(secs)) else float(secs)
    if row.get("status") != "ok" or row.get("value") is None:
        return math.nan, secs, str(row.get("error") or "failed").strip().splitlines()[-1][:200]
    return float(row["value"]), secs, ""


def _lowest(index, model: str, keys: dict[str, tuple[str, str, str]], errors: list[str]) -> tuple[float, float, str]:
    """The AutoAttack column: the lowest accuracy of its attack rows (the plan gives one, AA-lite
    included, so this is that row's accuracy), their summed seconds and ``"autoattack 0.41"``; NaN
    with an error when any of them is missing or failed."""
    values, seconds, parts = [], 0.0, []
    for name, key in keys.items():
        value, secs, err = _value(index.get((model, key)))
        if err:
            errors.append(f"{name}: {err}")
        values.append(value)
        seconds += 0.0 if math.isnan(secs) else secs
        parts.append(f"{name} {value:.4f}")
    value = math.nan if any(math.isnan(v) for v in values) else min(values)
    return value, seconds, ", ".join(parts)


def published_columns(published: dict[str, Any], model: str, tm: ThreatModel, clean: float,
                      aa: float) -> dict[str, Any]:
    """The published clean and robust figures of ``model`` at ``tm``, ours minus theirs, the other eps
    it was evaluated at, and its status ("not published", "not retrieved") when it has none."""
    clean_pub = entries_at(published, model, None, None)
    here = entries_at(published, model, tm.norm, tm.eps)
    robust_pub = best_robust(here)
    elsewhere = {e.eps_text for e in published.get(model, {}).get("entries", [])
                 if e.kind != "clean" and e.norm == tm.norm} - {e.eps_text for e in here}
    return {"published_clean": clean_pub[0] if clean_pub else None,
            "clean_minus_published": difference(clean, clean_pub[0] if clean_pub else None),
            "published_robust": robust_pub, "autoattack_minus_published": difference(aa, robust_pub),
            "published_other_eps": ", ".join(sorted(elsewhere)), "published_status": status_text(published, model)}


def build_table(plan: Plan, frame, medians: dict[tuple[str, str], float], published: dict[str, Any],
                zoo: dict[str, dict[str, Any]]):
    """The leaderboard as a DataFrame (one row per threat model and model), sorted within each threat model."""
    import pandas as pd

    index = _index(frame)
    records = []
    for order, tm in enumerate(plan.active()):
        keys = {"clean": ("accuracy", "clean", canonical_params({})), "pgd": attack_key(pgd_attack(tm))}
        aa_keys = {spec["name"]: attack_key(spec) for spec in autoattack(tm, plan.aa)}
        for col, (name, params) in MEASURE_COLUMNS.items():
            if col == "sharpness_robust" and not plan.robust_sharpness:
                continue
            keys[col] = measure_key(tm, name, params(tm))
        for model in plan.models_at(tm):
            rec: dict[str, Any] = {"_order": order, "dataset": tm.dataset, "threat_model": tm.label, "norm": tm.norm,
                                   "eps": tm.eps, "eps_text": tm.eps_text, "model": model,
                                   "training": zoo[model].get("training", ""), "source": zoo[model].get("source", "")}
            errors = []
            for col, key in keys.items():
                value, secs, err = _value(index.get((model, key)))
                rec[col], rec[f"seconds_{col}"] = value, secs
                if err and (err != "not scored" or col in ("clean", "pgd")):
                    errors.append(f"{col}: {err}")
            rec["autoattack"], rec["seconds_autoattack"], parts = _lowest(index, model, aa_keys, errors)
            rec["autoattack_parts"] = parts
            clean_row = index.get((model, keys["clean"]))
            n = clean_row["details"].get("n") if clean_row else None
            rec["n"] = n
            for col in ("clean", "pgd", "autoattack"):
                rec[f"{col}_se"] = standard_error(rec[col], n)
            rec["relative_flatness_median"] = medians.get((tm.dataset, model), math.nan)
            rec["pgd_minus_aa"] = rec["pgd"] - rec["autoattack"]
            rec["masking"] = masking(rec["pgd"], rec["autoattack"], n)
            rec.update(published_columns(published, model, tm, rec["clean"], rec["autoattack"]))
            rec["failures"] = "; ".join(errors)
            records.append(rec)
    table = pd.DataFrame(records)
    if table.empty:
        return table
    aa = table["autoattack"].fillna(-1.0)
    clean = table["clean"].fillna(-1.0)
    table = table.assign(_aa=aa, _clean=clean).sort_values(["_order", "_aa", "_clean", "model"],
                                                          ascending=[True, False, False, True], kind="stable")
    table["rank"] = table.groupby("_order").cumcount() + 1
    return table.drop(columns=["_order", "_aa", "_clean"]).reset_index(drop=True)
