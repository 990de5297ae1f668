"""The per-model summary table: one row per (model, source, dataset), one column per setting."""

from __future__ import annotations

import math
from typing import Any

from ..scoring.masking import KEY as MASKING, checks_of
from .rows import CLEAN, FAILURES, ID_COLUMNS, SECONDS, as_frame, column_labels, eps_of, first_line, number, short


def summary_table(frame, *, superseded: bool = False):
    """One row per (model, source, dataset): clean accuracy, robust accuracy per attack setting, every
    measure, the gradient-masking check, total seconds and the failures.

    Column names: ``clean_accuracy``; ``robust:<attack>[eps=8/255]`` (the eps, and any other setting
    that differs between the attack's runs); ``<measure>`` or, when a measure was run with several
    settings, ``<measure>[<the settings that differ>]``; ``gradient_masking`` (1.0: flagged, 0.0: checked
    and not flagged, see :mod:`flatplug.scoring.masking`; only when the rows carry the check).
    ``failures`` lists what failed with the first line of its error ("" when nothing failed); a failed
    result's own cell is NaN. ``frame`` is ``Store.to_dataframe()`` (or a :class:`Store`, or the path of
    one). ``table.attrs["columns"]`` maps each value column to
    its ``kind``, ``name`` and ``params``; ``table.attrs["fingerprints"]`` maps ``(model, source,
    dataset)`` to the model's and the data's fingerprints. A model scored with several weights under
    one name shows its newest weights; ``superseded=True`` adds the older ones as rows named
    ``<model> @weights:<fingerprint>``.
    """
    import pandas as pd

    rows = as_frame(frame, superseded=superseded)
    if superseded:
        rows = rows.copy()
        rows["model"] = [f"{m} @weights:{short(fp)}" if old else m
                         for m, fp, old in zip(rows["model"], rows["model_fingerprint"], rows["superseded"])]
    labels = column_labels(rows)
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    failures: dict[tuple[str, str, str], list[str]] = {}
    prints: dict[tuple[str, str, str], tuple[str, str]] = {}
    masking: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows.itertuples(index=False):
        ident = (r.model, r.source, r.dataset)
        rec = records.setdefault(ident, {})
        failures.setdefault(ident, [])
        if r.model_fingerprint or ident not in prints:
            prints[ident] = (r.model_fingerprint, r.data_fingerprint)
        secs = number(r.seconds)
        if not math.isnan(secs):
            rec[SECONDS] = rec.get(SECONDS, 0.0) + secs
        label = labels.get((r.kind, r.name, r.pkey))
        if r.status == "ok" and r.kind != "failure":
            rec[label] = r.value
            if r.kind == "attack":
                masking.setdefault(ident, []).extend(checks_of([r.details]))
        else:
            what = label or r.name
            failures[ident].append(f"{what}: {first_line(r.error) or 'failed (no error text)'}")
    params_of = dict(zip(zip(rows["kind"], rows["name"], rows["pkey"]), rows["params"]))
    meta = {label: {"kind": k, "name": n, "params": params_of[(k, n, pkey)]} for (k, n, pkey), label in labels.items()}

    def order(label: str) -> tuple:
        m = meta[label]
        rank = {"accuracy": 0, "attack": 1, "measure": 2}.get(m["kind"], 3)
        return (rank, 0 if label == CLEAN else 1, m["name"], eps_of(m["params"]) if m["kind"] == "attack" else 0, label)

    value_cols = sorted(meta, key=order)
    if any(masking.values()):
        meta[MASKING] = {"kind": "check", "name": MASKING, "params": {}}
        value_cols.append(MASKING)
        for ident, found in masking.items():
            if found:
                records[ident][MASKING] = float(any(c.get("flagged") for c in found))
    out = []
    for ident in sorted(records, key=lambda i: (i[2], i[1], i[0])):
        rec = records[ident]
        out.append({**dict(zip(ID_COLUMNS, ident)), **{c: rec.get(c, math.nan) for c in value_cols},
                    SECONDS: rec.get(SECONDS, math.nan), FAILURES: "; ".join(failures[ident])})
    table = pd.DataFrame(out, columns=[*ID_COLUMNS, *value_cols, SECONDS, FAILURES])
    for c in value_cols + [SECONDS]:
        table[c] = table[c].astype(float)
    table.attrs["columns"] = {c: meta[c] for c in value_cols}
    table.attrs["fingerprints"] = prints
    return table


def columns_of(table, kind: str) -> list[str]:
    """The value columns of one ``kind`` (accuracy, attack, measure, check)."""
    return [c for c, m in table.attrs.get("columns", {}).items() if m["kind"] == kind and c in table.columns]
