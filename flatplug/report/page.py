"""``build_report``: one self-contained HTML page with its figures and CSV tables beside it."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from .._stats import correlations
from .figures import corr_text, landscape_figure, landscape_groups, scatter, slug
from .rows import FAILURES, ID_COLUMNS, as_frame, column_labels, dataset_titles, settings_text
from .sections import (CSS, ci_html, e, flagged_models, headline, masking_section, model_table, provenance,
                       superseded_section)
from .tables import columns_of, summary_table

FIGURE_PREFIX = "fig-"
_NAV = ('<nav><a href="#correlations">Correlations</a><a href="#figures">Figures</a><a href="#models">Models</a>'
        '<a href="#masking">Gradient masking</a><a href="#landscapes">Landscapes</a><a href="#failures">Failures</a>'
        '<a href="#superseded">Superseded</a><a href="#provenance">Data and settings</a></nav>')


def _flatplug_version() -> str:
    from .. import __version__

    return __version__


def _out_folder(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is an existing file, not a folder; the report is a folder (index.html "
                              "and its figures): pass a folder name, e.g. --out flatplug-report")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{FIGURE_PREFIX}*.png"):  # figures of an earlier report in the same folder
        old.unlink()
    return out


def build_report(store_or_frame: Any, out_dir: str | os.PathLike, *, title: str | None = None,
                 n_boot: int = 1000, seed: int = 0) -> Path:
    """Write ``out_dir/index.html``: a headline per dataset, correlations of every measure with robust and
    clean accuracy (Spearman rho, Kendall tau-b, bootstrap 95% intervals over models; one scatter PNG per
    pair, models labelled), the per-model table, the gradient-masking flags, loss-landscape curves when
    present, failures with their errors, results of superseded weights, and the provenance (data and its
    fingerprint, models and theirs, settings with implementation versions, device, versions). Also writes
    ``summary.csv`` and ``correlations.csv``. The page links only to files beside it. Returns its path.
    """
    every = as_frame(store_or_frame, superseded=True)
    rows = every[~every["superseded"]].reset_index(drop=True)
    out = _out_folder(out_dir)
    table = summary_table(rows)
    table.to_csv(out / "summary.csv", index=False)
    title = title or "flatplug report: flatness versus robustness"
    titles = dataset_titles(rows)
    fig_count = 0

    def fig_path(*parts: str) -> Path:
        nonlocal fig_count
        fig_count += 1
        return out / f"{FIGURE_PREFIX}{fig_count:03d}-{'-'.join(slug(p) for p in parts)}.png"

    def named(dataset: str) -> str:
        return f"{titles[dataset]} ({dataset})" if dataset in titles else dataset

    flagged = flagged_models(rows)
    measures = columns_of(table, "measure")
    targets = columns_of(table, "attack") + columns_of(table, "accuracy")
    corr_rows, figures, headlines = [], [], []
    for dataset, sub in table.groupby("dataset", sort=True):
        found = []
        for m in measures:
            if not sub[m].notna().any():
                continue
            for t in targets:
                if not sub[t].notna().any():
                    continue
                c = correlations(sub, m, t, n_boot=n_boot, seed=seed)
                path = fig_path(str(dataset), m, "vs", t)
                scatter(path, sub, m, t, c, titles.get(str(dataset), str(dataset)), flagged.get(dataset, frozenset()))
                corr_rows.append((str(dataset), c, path.name))
                found.append(c)
                figures.append((str(dataset), path.name, f"{m} against {t} on {named(dataset)}: {corr_text(c)}"))
        headlines.append(headline(named(str(dataset)), len(sub), found))
    import pandas as pd

    pd.DataFrame([{"dataset": d, **c.as_dict(), "figure": f} for d, c, f in corr_rows],
                 columns=["dataset", "x", "y", "n", "spearman", "kendall", "n_boot", "n_boot_valid", "reason",
                          "spearman_lo", "spearman_hi", "kendall_lo", "kendall_hi", "figure"]
                 ).to_csv(out / "correlations.csv", index=False)

    landscapes = []
    labels = column_labels(rows)
    for dataset, name, pkey, curves in landscape_groups(rows):
        label = labels.get(("measure", name, pkey), name)
        path = fig_path(dataset, label, "landscape")
        settings = settings_text(json.loads(pkey))
        if landscape_figure(path, titles.get(dataset, dataset), f"{name} ({settings})", curves):
            landscapes.append((dataset, path.name, f"{label} on {named(dataset)} ({settings}): {len(curves)} models"))

    failed = rows[rows["status"] != "ok"]
    n_models = len(table)
    n_sets = rows["dataset"].nunique()
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{len(rows)} results for {n_models} model{"s" if n_models != 1 else ""} on '
        f'{n_sets} dataset{"s" if n_sets != 1 else ""}; {len(failed)} failure{"s" if len(failed) != 1 else ""}. '
        f"Written by flatplug {e(_flatplug_version())} on "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
        _NAV,
        '<h2 id="correlations">Does flatness predict robustness?</h2>',
        *[f'<p class="headline">{e(h)}</p>' for h in headlines],
        '<p class="note">Rank correlations over models of each measure with each accuracy: Spearman \u03c1 and '
        f"Kendall \u03c4-b, with 95% bootstrap percentile intervals ({n_boot} resamples of the models, seed {seed}). "
        "Bold: the interval excludes zero. For most flatness measures a larger value means a sharper model, "
        "so sharper-is-less-robust shows as a negative correlation.</p>",
    ]
    if corr_rows:
        parts.append('<div class="wrap"><table><thead><tr><th>dataset</th><th>measure</th><th>accuracy</th><th>n</th>'
                     "<th>Spearman \u03c1 [95% CI]</th><th>Kendall \u03c4 [95% CI]</th><th>note</th><th>figure</th>"
                     "</tr></thead><tbody>")
        for d, c, f in corr_rows:
            parts.append(f"<tr><td>{e(titles.get(d, d))}</td><td>{e(c.x)}</td><td>{e(c.y)}</td><td class=\"num\">"
                         f"{c.n}</td>{ci_html(c.spearman, c.spearman_ci)}{ci_html(c.kendall, c.kendall_ci)}"
                         f"<td>{e(c.reason or '')}</td><td><a href=\"{e(f)}\">png</a></td></tr>")
        parts.append("</tbody></table></div>")
    else:
        parts.append('<p class="note">No measure and accuracy were both scored: nothing to correlate.</p>')
    parts.append('<h2 id="figures">Figures</h2>')
    if figures:
        for dataset in sorted({d for d, _, _ in figures}):
            parts.append(f"<h3>{e(named(dataset))}</h3><div class=\"figs\">")
            for d, name, caption in figures:
                if d == dataset:
                    parts.append(f'<figure><img src="{e(name)}" alt="{e(caption)}" loading="eager">'
                                 f"<figcaption>{e(caption)}</figcaption></figure>")
            parts.append("</div>")
    else:
        parts.append('<p class="note">No figures: no measure was scored together with an accuracy.</p>')
    parts.append('<h2 id="models">Per-model results</h2>')
    parts.append('<p class="note">Accuracies are fractions; robust columns name the attack and its eps; '
                 "a measure with several settings gets one column per setting. \u2014: not scored or failed. "
                 "The table scrolls inside its box.</p>")
    for dataset, sub in table.groupby("dataset", sort=True):
        sub = sub.copy()
        sub.attrs = table.attrs
        keep = [c for c in sub.columns if c in ID_COLUMNS or c == FAILURES or sub[c].notna().any()]
        parts.append(f"<h3>{e(named(str(dataset)))}</h3>{model_table(sub[keep])}")
    if table.empty:
        parts.append('<p class="note">The store holds no results.</p>')
    parts.append('<h2 id="masking">Gradient masking</h2>')
    parts.extend(masking_section(rows))
    parts.append('<h2 id="landscapes">Loss landscapes</h2>')
    if landscapes:
        parts.append('<div class="figs">')
        for d, name, caption in landscapes:
            parts.append(f'<figure class="wide"><img src="{e(name)}" alt="{e(caption)}" loading="eager">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        parts.append("</div>")
    else:
        parts.append('<p class="note">No landscape curves in the store (measure loss_landscape not scored).</p>')
    parts.append('<h2 id="failures">Failures</h2>')
    if len(failed):
        parts.append('<div class="wrap"><table><thead><tr><th>model</th><th>source</th><th>dataset</th><th>what</th>'
                     "<th>settings</th><th>error</th></tr></thead><tbody>")
        for r in failed.itertuples(index=False):
            what = r.kind if r.kind == r.name else f"{r.kind} {r.name}"
            parts.append(f"<tr><td>{e(r.model)}</td><td>{e(r.source)}</td><td>{e(r.dataset)}</td><td>{e(what)}</td>"
                         f"<td>{e(settings_text(r.params))}</td><td><pre class=\"error\">"
                         f"{e(r.error or 'no error text recorded')}</pre></td></tr>")
        parts.append("</tbody></table></div>")
    else:
        parts.append('<p class="note">Nothing failed.</p>')
    parts.append('<h2 id="superseded">Superseded results</h2>')
    parts.extend(superseded_section(every[every["superseded"]]))
    parts.append('<h2 id="provenance">Data and settings</h2>')
    for dataset, items in provenance(rows):
        parts.append(f"<h3>{e(named(dataset))}</h3><dl class=\"prov\">")
        parts.extend(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items)
        parts.append("</dl>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
