"""Write the leaderboard: ``docs/leaderboard/`` (``index.html`` with the correlations of every measure
with AutoAttack accuracy, plain and partial given clean accuracy; one flatplug report per threat model
plotting every measure against AutoAttack accuracy; ``results.csv``/``.parquet``,
``correlations.csv``/``.parquet``, ``run.json``), then ``docs/leaderboard.md`` (:mod:`.markdown`),
last, so it records the wall time of the whole run."""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..store import canonical_params
from .markdown import markdown, measure_columns
from .plan import DATASET_NAMES, Plan, aa_label
from .stats import correlations, partial_correlations
from .table import MEASURE_COLUMNS, measure_key

TARGET = "autoattack"
CONTROL = "clean"
ENTRY_FIELDS = ("kind", "value", "method", "n", "subset", "representative", "source", "url", "where")


def correlation_rows(table, n_boot: int = 1000) -> list[dict[str, Any]]:
    """Each measure against AutoAttack accuracy per threat model: Spearman and Kendall over models with
    95% bootstrap intervals, and the partial versions controlling for clean accuracy with 95% Fisher-z
    intervals (:mod:`flatplug.leaderboard.stats` says why)."""
    rows = []
    for (dataset, label), sub in table.groupby(["dataset", "threat_model"], sort=False):
        for col in measure_columns(table):
            c = correlations(sub, col, TARGET, n_boot=n_boot, seed=0)
            p = partial_correlations(sub, col, TARGET, CONTROL)
            rows.append({"dataset": dataset, "threat_model": label, "measure": col, "n": c.n,
                         "spearman": c.spearman, "spearman_lo": c.spearman_ci[0], "spearman_hi": c.spearman_ci[1],
                         "kendall": c.kendall, "kendall_lo": c.kendall_ci[0], "kendall_hi": c.kendall_ci[1],
                         "partial_spearman": p.spearman, "partial_spearman_lo": p.spearman_ci[0],
                         "partial_spearman_hi": p.spearman_ci[1], "partial_kendall": p.kendall,
                         "partial_kendall_lo": p.kendall_ci[0], "partial_kendall_hi": p.kendall_ci[1],
                         "note": c.reason or p.reason or ""})
    return rows


def flat_results(table):
    """The table with the published entries spelt out as columns (for CSV and Parquet)."""
    flat = table.copy()
    for col in ("published_clean", "published_robust"):
        entries = flat.pop(col)
        for field in ENTRY_FIELDS:
            flat[f"{col}_{field}"] = [getattr(e, field) if e is not None else None for e in entries]
    return flat


def _ci(v: float, lo: float, hi: float) -> str:
    if v is None or math.isnan(v):
        return "—"
    text = f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else f"{v:+.2f}"
    return f"<b>{text}</b>" if not math.isnan(lo) and (lo > 0 or hi < 0) else text


def index_html(corr: list[dict[str, Any]], reports: list[tuple[str, str]], record: dict[str, Any],
               target: str = "AutoAttack") -> str:
    e = html.escape
    run = {k: record.get(k) for k in ("started", "device", "n", "executor")}
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>flatplug leaderboard</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1300px;margin:auto;padding:1rem 2rem}"
             "table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
             ".wrap{overflow-x:auto}</style></head><body>",
             f"<h1>Flatness leaderboard: which measures track {e(target)} accuracy?</h1>",
             f"<p>Run {e(json.dumps(run))}; the ranked tables are in <a href='../leaderboard.md'>docs/leaderboard.md"
             "</a>; results.csv / results.parquet hold every value and the seconds it took, correlations.csv / "
             "correlations.parquet the table below.</p>",
             f"<p>Spearman ρ and Kendall τ-b of each measure with {e(target)} accuracy over the models of one threat "
             "model, and the partial rank correlations controlling for clean accuracy (first-order partial of "
             "the rank correlations: does the measure track robustness beyond what clean accuracy explains?); "
             "95% intervals, bold where they exclude zero: "
             f"{e(str(record.get('correlation_intervals', {}).get('plain', 'bootstrap percentile over models')))} "
             "for the plain correlations; for the partial ones "
             f"{e(str(record.get('correlation_intervals', {}).get('partial', 'Fisher z')))} (a bootstrap over 8 "
             "models excluded zero in a third of simulated zoos without any partial correlation). None is "
             "adjusted for the many measures and threat models compared: about one in twenty intervals excludes "
             "zero by chance alone.</p>",
             "<div class='wrap'><table><tr><th>dataset</th><th>threat model</th><th>measure</th><th>models</th>"
             "<th>Spearman</th><th>Kendall</th><th>partial Spearman | clean</th><th>partial Kendall | clean</th>"
             "<th>note</th></tr>"]
    for r in corr:
        parts.append(f"<tr><td>{e(DATASET_NAMES.get(r['dataset'], r['dataset']))}</td><td>{e(r['threat_model'])}</td>"
                     f"<td>{e(r['measure'])}</td><td>{r['n']}</td>"
                     f"<td>{_ci(r['spearman'], r['spearman_lo'], r['spearman_hi'])}</td>"
                     f"<td>{_ci(r['kendall'], r['kendall_lo'], r['kendall_hi'])}</td>"
                     f"<td>{_ci(r['partial_spearman'], r['partial_spearman_lo'], r['partial_spearman_hi'])}</td>"
                     f"<td>{_ci(r['partial_kendall'], r['partial_kendall_lo'], r['partial_kendall_hi'])}</td>"
                     f"<td>{e(r['note'])}</td></tr>")
    parts.append(f"</table></div><h2>Every measure against {e(target)} accuracy, per threat model</h2>"
                 "<p>flatplug reports (scatter plots with model labels, correlations with clean and PGD "
                 "accuracy too, provenance):</p><ul>")
    parts += [f"<li><a href='{e(href)}'>{e(label)}</a></li>" for label, href in reports]
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def _canon(params: Any) -> str:
    return canonical_params(json.loads(params) if isinstance(params, str) else params)


def report_frame(plan: Plan, tm, table, frame):
    """Rows for a flatplug report of threat model ``tm``: its measure rows and clean accuracy from the
    store, plus one row per model holding the leaderboard's AutoAttack column (AA-lite included: one
    attack row), so the report plots every measure against exactly that column."""
    import pandas as pd

    keys = {("accuracy", "clean", _canon({}))}
    for col, (name, params) in MEASURE_COLUMNS.items():
        if col != "sharpness_robust" or plan.robust_sharpness:
            keys.add(measure_key(tm, name, params(tm)))
    models = set(plan.models_at(tm))
    mask = [m in models and (k, n, _canon(p)) in keys
            for m, k, n, p in zip(frame["model"], frame["kind"], frame["name"], frame["params"])]
    rows = frame[mask]
    if rows.empty:
        return rows
    sub = table[(table.dataset == tm.dataset) & (table.threat_model == tm.label)]
    dataset = dict(zip(rows["model"], rows["dataset"]))
    source = dict(zip(rows["model"], rows["source"]))
    aa = pd.DataFrame({"model": sub.model, "source": [source.get(m, "zoo") for m in sub.model],
                       "dataset": [dataset.get(m, "") for m in sub.model], "kind": "attack",
                       "name": aa_label(plan.aa).split(" ")[0].lower(),
                       "params": canonical_params({"eps": tm.eps, "norm": tm.norm}), "value": sub.autoattack,
                       "details": [{"parts": p} for p in sub.autoattack_parts], "seconds": sub.seconds_autoattack,
                       "status": ["ok" if v == v else "failed" for v in sub.autoattack]})
    return pd.concat([rows, aa], ignore_index=True)


def write_all(plan: Plan, result, table, *, md_path: str | os.PathLike, out_dir: str | os.PathLike, command: str,
              n_boot: int = 1000, started: float | None = None) -> dict[str, Path]:
    """Write every output; ``started`` (a ``time.perf_counter()``) makes the recorded wall time cover it all."""
    import pandas as pd

    from ..report import build_report

    out, md_path = Path(out_dir), Path(md_path)
    out.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    record = dict(result.record)
    record["compute_seconds"] = float(pd.to_numeric(result.frame["seconds"], errors="coerce").sum())
    record["correlation_intervals"] = {"plain": f"bootstrap percentile over models, {n_boot} resamples, seed 0",
                                       "partial": "Fisher z, Fieller, Hartley & Pearson (1957) variances"}
    corr = correlation_rows(table, n_boot=n_boot)
    flat = flat_results(table)
    paths = {"results_csv": out / "results.csv", "correlations_csv": out / "correlations.csv"}
    flat.to_csv(paths["results_csv"], index=False)
    pd.DataFrame(corr).to_csv(paths["correlations_csv"], index=False)
    try:
        flat.to_parquet(out / "results.parquet", index=False)
        pd.DataFrame(corr).to_parquet(out / "correlations.parquet", index=False)
        paths.update(results_parquet=out / "results.parquet", correlations_parquet=out / "correlations.parquet")
    except ImportError:
        record["parquet"] = "not written: pyarrow is not installed"
    reports = []
    for tm in plan.active():
        rows = report_frame(plan, tm, table, result.frame)
        if len(rows):
            build_report(rows, out / tm.slug, n_boot=n_boot,
                         title=f"flatplug leaderboard: {DATASET_NAMES[tm.dataset]}, {tm.label}")
            reports.append((f"{DATASET_NAMES[tm.dataset]}, {tm.label}", f"{tm.slug}/index.html"))
    (out / "index.html").write_text(index_html(corr, reports, record, aa_label(plan.aa)), encoding="utf-8")
    if started is not None:
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
    md_path.write_text(markdown(plan, table, record, command), encoding="utf-8")
    (out / "run.json").write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    paths.update(markdown=md_path, html=out / "index.html", run=out / "run.json")
    return paths
