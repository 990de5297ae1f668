"""The report page's parts: style, cells, the per-model table, headlines, masking flags, provenance."""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any

from .._stats import Correlation
from ..scoring.masking import MASKING_MARGIN, VANISHING_FRACTION, checks_of
from .rows import FAILURES, ID_COLUMNS, SHORT, fmt_param, number, settings_text, short

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2329; background: #fff;
       max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 4rem; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; margin-top: 2.4rem; border-bottom: 2px solid #d8dee4; padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
p.meta, p.note { color: #57606a; font-size: 0.9rem; }
p.headline { font-size: 1.02rem; background: #f3f6fa; border-left: 4px solid #1f6feb; padding: 0.5rem 0.8rem; }
p.warn { background: #fff4e5; border-left: 4px solid #d1570b; padding: 0.5rem 0.8rem; }
nav a { margin-right: 1rem; }
.wrap { overflow-x: auto; max-width: 100%; }
.wrap.models { max-height: 75vh; overflow: auto; border: 1px solid #d0d7de; border-radius: 4px; }
.wrap.models table { margin: 0; }
.wrap.models thead th { position: sticky; top: 0; z-index: 2; }
.wrap.models td:first-child, .wrap.models th:first-child { position: sticky; left: 0; z-index: 1;
       background: #ffffff; }
.wrap.models thead th:first-child { z-index: 3; background: #eef1f4; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.55rem; vertical-align: top; }
th { background: #eef1f4; text-align: left; }
tbody tr:nth-child(even) { background: #f7f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: #9aa0a6; text-align: center; }
td.fail { color: #b3261e; min-width: 16rem; }
td.flag { color: #d1570b; font-weight: 600; white-space: nowrap; }
td.hash { font-family: ui-monospace, monospace; font-size: 0.8rem; white-space: nowrap; }
.strong { font-weight: 600; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; flex: 1 1 520px; max-width: 580px; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.4rem; }
figure.wide { max-width: 920px; flex-basis: 920px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.8rem; color: #57606a; padding-top: 0.3rem; }
pre.error { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 0.8rem; max-height: 14rem; overflow: auto; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; font-size: 0.9rem; }
dl.prov dt { font-weight: 600; } dl.prov dd { margin: 0; word-break: break-word; }
"""


def e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def cell(value: Any, kind: str) -> str:
    v = number(value)
    if math.isnan(v):
        return '<td class="na">\u2014</td>'
    if kind == "check":
        return '<td class="flag">flagged</td>' if v > 0 else '<td class="num">no</td>'
    text = f"{v:.3f}" if kind in ("accuracy", "attack") else f"{v:.1f}" if kind == "seconds" else f"{v:.4g}"
    return f'<td class="num">{text}</td>'


def model_table(table) -> str:
    """The per-model table in its own scrolling box (sticky header and model column)."""
    meta = table.attrs.get("columns", {})
    cols = [c for c in table.columns if c not in ID_COLUMNS]
    head = "".join(f"<th>{e(c)}</th>" for c in (*ID_COLUMNS, *cols))
    body = []
    for _, row in table.iterrows():
        cells = [f"<td>{e(row[c])}</td>" for c in ID_COLUMNS]
        for c in cols:
            if c == FAILURES:
                cells.append(f'<td class="fail">{e(row[c])}</td>' if row[c] else "<td></td>")
            else:
                cells.append(cell(row[c], meta.get(c, {}).get("kind", "seconds")))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="wrap models"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def ci_html(v: float, lo_hi: tuple[float, float]) -> str:
    if math.isnan(v):
        return '<td class="na">\u2014</td>'
    lo, hi = lo_hi
    interval = f" [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else ""
    strong = not math.isnan(lo) and (lo > 0 or hi < 0)
    return f'<td class="num{" strong" if strong else ""}">{v:+.2f}{interval}</td>'


def headline(name: str, n_models: int, corrs: list[Correlation]) -> str:
    """One sentence: the strongest measure-accuracy correlation of a dataset and whether its interval excludes 0."""
    usable = [c for c in corrs if not c.reason and not math.isnan(c.spearman)]
    if not usable:
        return (f"{name}: {n_models} model{'s' if n_models != 1 else ''}; no correlation could be computed "
                "(score at least 3 models with a measure and an accuracy).")
    robust = [c for c in usable if c.y.startswith("robust:")] or usable
    best = max(robust, key=lambda c: (abs(c.spearman), -c.x.__len__()))
    lo, hi = best.spearman_ci
    if math.isnan(lo):
        verdict = "no interval could be computed"
    elif lo > 0 or hi < 0:
        verdict = f"its 95% interval [{lo:+.2f}, {hi:+.2f}] excludes zero"
    else:
        verdict = f"its 95% interval [{lo:+.2f}, {hi:+.2f}] includes zero, so the sign is not established"
    picked = f" (the largest of {len(robust)} correlations: the interval does not allow for that choice)" \
        if len(robust) > 1 else ""
    return (f"{name}, {best.n} models: the strongest link is {best.x} with {best.y}, Spearman \u03c1 = "
            f"{best.spearman:+.2f}; {verdict}{picked}.")


def _masking_by_model(rows) -> dict[tuple[str, str], list[dict]]:
    attacks = rows[(rows["kind"] == "attack") & (rows["status"] == "ok")]
    out: dict[tuple[str, str], list[dict]] = {}
    for model, dataset, details in zip(attacks["model"], attacks["dataset"], attacks["details"]):
        found = checks_of([details])
        if found:
            out.setdefault((dataset, model), []).extend(found)
    return out


def flagged_models(rows) -> dict[str, frozenset[str]]:
    """Dataset -> the models whose attack rows flag gradient masking."""
    out: dict[str, set[str]] = {}
    for (dataset, model), found in _masking_by_model(rows).items():
        if any(c.get("flagged") for c in found):
            out.setdefault(dataset, set()).add(model)
    return {d: frozenset(m) for d, m in out.items()}


def masking_section(rows) -> list[str]:
    """The models flagged by the gradient-masking check, with the reasons."""
    checked = _masking_by_model(rows)
    if not checked:
        return ['<p class="note">No gradient-masking check in the store (rows written before flatplug 0.2).</p>']
    flagged = {k: v for k, v in checked.items() if any(c.get("flagged") for c in v)}
    out = [f'<p class="note">{len(checked)} model{"s" if len(checked) != 1 else ""} checked; {len(flagged)} '
           f"flagged. A model is flagged when the first attack's robust accuracy exceeds a stronger attack's by more "
           f"than {MASKING_MARGIN} at the same eps, or when its input gradients vanish on more than "
           f"{VANISHING_FRACTION:.0%} of the samples (flatplug.scoring.masking). A flagged model's flatness and robust "
           "accuracy may describe masked gradients rather than robustness.</p>"]
    if flagged:
        out.append('<p class="warn">Gradient masking flagged for ' + e(", ".join(sorted(m for _, m in flagged)))
                   + ".</p>")
        out.append('<div class="wrap"><table><thead><tr><th>model</th><th>dataset</th><th>why</th></tr></thead><tbody>')
        for (dataset, model), found in sorted(flagged.items()):
            reasons = [r for c in found for r in c.get("reasons", [])]
            out.append(f"<tr><td>{e(model)}</td><td>{e(dataset)}</td><td>{e('; '.join(reasons))}</td></tr>")
        out.append("</tbody></table></div>")
    return out


def superseded_section(old) -> list[str]:
    """Rows of older weights under a model name that was scored again with other weights."""
    if old.empty:
        return ['<p class="note">No model was scored with other weights under the same name.</p>']
    out = ['<p class="note">These models were later scored again under the same name with other weights; the '
           "tables and correlations above use the newest weights, the older results are kept here.</p>",
           '<div class="wrap"><table><thead><tr><th>model</th><th>dataset</th><th>weights</th><th>result</th>'
           "<th>value</th><th>scored</th></tr></thead><tbody>"]
    for r in old.itertuples(index=False):
        what = f"{r.kind} {r.name}" if r.kind != "accuracy" else "clean accuracy"
        out.append(f"<tr><td>{e(r.model)}</td><td>{e(r.dataset)}</td><td class=\"hash\">{e(short(r.model_fingerprint))}"
                   f"</td><td>{e(what)} ({e(settings_text(r.params))})</td>{cell(r.value, r.kind)}"
                   f"<td>{e(_when(r.created))}</td></tr>")
    out.append("</tbody></table></div>")
    return out


def _when(t: Any) -> str:
    v = number(t)
    return "" if math.isnan(v) else _dt.datetime.fromtimestamp(v, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _data_text(sub) -> tuple[str, str]:
    infos = [d["data"] for d in sub["details"] if isinstance(d, dict) and isinstance(d.get("data"), dict)]
    prints = sorted({fp for fp in sub["data_fingerprint"] if fp})
    if not infos:
        if prints:
            return "", ", ".join(short(p) for p in prints)
        return "", ""
    info = infos[-1]
    parts = [str(info.get("title") or info.get("dataset"))]
    if info.get("path"):
        parts.append(f"from {info['path']}")
    elif info.get("from"):
        parts.append(f"from {info['from']}")
    parts.append(f"n={info.get('n')}, seed={info.get('seed', 0)}")
    if info.get("file_sha256"):
        parts.append(f"file sha256 {str(info['file_sha256'])[:SHORT]}")
    return "; ".join(parts), ", ".join(short(p) for p in prints)


def provenance(rows) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per dataset: data (name, path, n, fingerprints), models, settings with versions, device, versions, time."""
    out = []
    for dataset, sub in rows.groupby("dataset", sort=True):
        items: list[tuple[str, str]] = []
        data, prints = _data_text(sub)
        legacy = (sub["data_fingerprint"] == "").any()
        items.append(("data", data or ("not recorded: rows written without data fingerprints (flatplug 0.1.0 or "
                                       "Store.put by hand)" if legacy else "not recorded")))
        if prints:
            items.append(("data fingerprint", prints + ("; also rows without one (legacy)" if legacy else "")))
        found = sorted({fmt_param(k, d[k]) for col in ("params", "details") for d in sub[col]
                        if isinstance(d, dict) for k in ("n", "n_samples", "num_samples") if d.get(k) is not None})
        items.append(("samples (n)", ", ".join(found) if found else "not recorded"))
        models = sorted(set(sub["model"]))
        items.append(("models", f"{len(models)} ({', '.join(sorted(set(sub['source'])))} source"
                                f"{'s' if len(set(sub['source'])) > 1 else ''})"))
        weights = sorted({(m, fp) for m, fp in zip(sub["model"], sub["model_fingerprint"])})
        items.append(("model fingerprints", "; ".join(f"{m} {short(fp)}" for m, fp in weights)))
        for kind, label in (("attack", "attack settings"), ("measure", "measure settings"),
                            ("accuracy", "accuracy settings")):
            part = sub[sub["kind"] == kind]
            found = sorted({f"{n} ({settings_text(p)})" + (f" [{v}]" if v else "")
                            for n, p, v in zip(part["name"], part["params"], part["impl_version"])})
            if found:
                items.append((label, "; ".join(found)))
            if kind == "attack":  # every setting the attack ran with, its constructor's defaults included
                full = sorted({d["attack"] for d in part["details"] if isinstance(d, dict) and d.get("attack")})
                if full:
                    items.append(("attacks as run", "; ".join(full)))
        devices = sorted({str(d) for d in sub["device"] if isinstance(d, str) and d})
        items.append(("device", ", ".join(devices) if devices else "not recorded"))
        versions: dict[str, set[str]] = {}
        for v in sub["versions"]:
            if isinstance(v, dict):
                for k, val in v.items():
                    versions.setdefault(str(k), set()).add(str(val))
        items.append(("versions", "; ".join(f"{k} {' / '.join(sorted(vals))}" for k, vals in sorted(versions.items()))
                      or "not recorded"))
        secs = [s for s in (number(x) for x in sub["seconds"]) if not math.isnan(s)]
        if secs:
            items.append(("compute time", f"{sum(secs):.1f} s over {len(secs)} results"))
        created = [c for c in (number(x) for x in sub["created"]) if not math.isnan(c)]
        if created:
            items.append(("scored", f"{_when(min(created))} to {_when(max(created))}"))
        out.append((str(dataset), items))
    return out
