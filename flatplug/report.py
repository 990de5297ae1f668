"""The report of a results store: a per-model table, rank correlations of every flatness measure
with robust and clean accuracy (bootstrap intervals), figures, and one self-contained HTML page.

:func:`summary_table` pivots the store's rows to one row per (model, source, dataset);
:func:`correlations` gives Spearman's rho and Kendall's tau-b over models with bootstrap 95%
percentile intervals; :func:`build_report` writes ``index.html`` with PNG figures beside it
(relative links only, no scripts, no network), plus ``summary.csv`` and ``correlations.csv``.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._stats import Correlation, correlations
from .store import Store, canonical_params
from .trajectory_plot import plot_trajectory  # noqa: F401  (attack trajectories, torchattacks adapter)

ID_COLUMNS = ("model", "source", "dataset")
CLEAN = "clean_accuracy"
SECONDS = "seconds"
FAILURES = "failures"
_REQUIRED = ("model", "source", "dataset", "kind", "name", "params", "value")
_OPTIONAL = {"details": dict, "seconds": None, "device": None, "versions": dict, "status": "ok", "error": None,
             "created": None}
_SAMPLE_KEYS = ("n", "n_samples", "num_samples")
_DATA_KEYS = ("data", "data_path")
_FIGURE_PREFIX = "fig-"
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2329; background: #fff;
       max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 4rem; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; margin-top: 2.4rem; border-bottom: 2px solid #d8dee4; padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
p.meta, p.note { color: #57606a; font-size: 0.9rem; }
nav a { margin-right: 1rem; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.55rem; vertical-align: top; }
th { background: #eef1f4; text-align: left; }
tbody tr:nth-child(even) { background: #f7f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: #9aa0a6; text-align: center; }
td.fail { color: #b3261e; min-width: 16rem; }
.strong { font-weight: 600; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; flex: 1 1 520px; max-width: 580px; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.4rem; }
figure.wide { max-width: 920px; flex-basis: 920px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.8rem; color: #57606a; padding-top: 0.3rem; }
pre.error { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 0.8rem; max-height: 14rem; overflow: auto; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; font-size: 0.9rem; }
dl.prov dt { font-weight: 600; } dl.prov dd { margin: 0; }
"""


# -- reading rows ------------------------------------------------------------------------------


def _as_frame(store_or_frame: Any):
    """A DataFrame of store rows from a DataFrame, a :class:`Store` or the path of a store file."""
    import pandas as pd

    if isinstance(store_or_frame, pd.DataFrame):
        frame = store_or_frame
    elif isinstance(store_or_frame, Store):
        frame = store_or_frame.to_dataframe()
    elif isinstance(store_or_frame, (str, os.PathLike)):
        path = Path(store_or_frame)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results store there; run `flatplug score --store {path}` first, "
                                    "or pass the path of an existing store")
        with Store(path, readonly=True) as store:
            frame = store.to_dataframe()
    else:
        raise TypeError(f"expected a results Store, the path of one, or a DataFrame of its rows; "
                        f"got {type(store_or_frame).__name__}")
    return _normalise(frame)


def _json_field(value: Any, default: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else default
        except json.JSONDecodeError:
            return default
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def _number(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _normalise(frame):
    """Rows with parsed ``params``/``details``/``versions`` dicts, a ``key`` column, duplicates dropped."""
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"the results frame lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                         "pass Store.to_dataframe() or the DataFrame fp.score returns")
    f = frame.copy()
    for col, default in _OPTIONAL.items():
        if col not in f.columns:
            f[col] = [default() if callable(default) else default for _ in range(len(f))]
    f["params"] = [_json_field(p, {}) for p in f["params"]]
    f["details"] = [_json_field(d, {}) for d in f["details"]]
    f["versions"] = [_json_field(v, {}) for v in f["versions"]]
    f["status"] = [s if isinstance(s, str) and s else "ok" for s in f["status"]]
    f["value"] = [_number(v) for v in f["value"]]
    for col in ID_COLUMNS + ("kind", "name"):
        f[col] = f[col].astype(str)
    f["pkey"] = [canonical_params(p if isinstance(p, dict) else {"value": p}) for p in f["params"]]
    if f["created"].notna().any():
        f = f.sort_values("created", kind="stable", na_position="first")
    f = f.drop_duplicates(subset=list(ID_COLUMNS) + ["kind", "name", "pkey"], keep="last")
    return f.reset_index(drop=True)


# -- labels --------------------------------------------------------------------------------------


def _is_eps(key: str) -> bool:
    """``eps``, ``eps_step``, ``attack_eps``: a perturbation radius (but not ``steps``)."""
    return re.search(r"(^|_)eps($|_)", key.lower()) is not None


def _settings_text(params: Any) -> str:
    """``eps=8/255, steps=10``: settings as a reader writes them ("defaults" when there are none)."""
    if not isinstance(params, dict):
        return _fmt_param("value", params)
    return ", ".join(f"{k}={_fmt_param(k, v)}" for k, v in sorted(params.items())) or "defaults"


def _fmt_param(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        v = float(value)
        k = v * 255
        if _is_eps(key) and 0 < v <= 1 and abs(k - round(k)) < 1e-6 and round(k) >= 1 and not float(v).is_integer():
            return f"{int(round(k))}/255"
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _column_labels(rows) -> dict[tuple[str, str, str], str]:
    """(kind, name, params key) -> column label: the name, plus the settings that tell columns apart."""
    settings: dict[tuple[str, str], dict[str, dict]] = {}
    for kind, name, pkey, params in zip(rows["kind"], rows["name"], rows["pkey"], rows["params"]):
        if kind == "failure":
            continue
        settings.setdefault((kind, name), {})[pkey] = params if isinstance(params, dict) else {"value": params}
    labels: dict[tuple[str, str, str], str] = {}
    taken = set(ID_COLUMNS) | {SECONDS, FAILURES}
    for (kind, name), by_key in sorted(settings.items()):
        if kind == "accuracy":
            base = CLEAN if name == "clean" else f"accuracy:{name}"
        elif kind == "attack":
            base = f"robust:{name}"
        else:
            base = name
        all_keys = sorted({k for p in by_key.values() for k in p})
        differ = [k for k in all_keys
                  if len({json.dumps(p[k], sort_keys=True, default=repr) if k in p else "<absent>"
                          for p in by_key.values()}) > 1]
        shown = ([k for k in all_keys if _is_eps(k) and k not in differ] if kind == "attack" else []) + differ
        group = {}
        for pkey, params in by_key.items():
            parts = [f"{k}={_fmt_param(k, params[k])}" for k in shown if k in params]
            group[pkey] = base + (f"[{', '.join(parts)}]" if parts else "")
        if len(set(group.values())) < len(group):  # formatting made two settings look alike: show them in full
            group = {pkey: f"{base}[{pkey}]" for pkey in by_key}
        for pkey, label in group.items():
            if label in taken:
                label = f"{kind}:{label}"
            taken.add(label)
            labels[(kind, name, pkey)] = label
    return labels


def _first_line(text: Any, limit: int = 200) -> str:
    s = str(text or "").strip()
    line = next((ln.strip() for ln in s.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def _eps_of(params: dict) -> float:
    for k, v in params.items():
        if _is_eps(k) and isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return math.inf


# -- the summary table ---------------------------------------------------------------------------


def summary_table(frame):
    """One row per (model, source, dataset): clean accuracy, robust accuracy per attack setting, every
    measure, total seconds and the failures.

    Column names: ``clean_accuracy``; ``robust:<attack>[eps=8/255]`` (the eps, and any other setting
    that differs between the attack's runs); ``<measure>`` or, when a measure was run with several
    settings, ``<measure>[<the settings that differ>]``. ``failures`` lists what failed with the first
    line of its error ("" when nothing failed); a failed result's own cell is NaN. ``frame`` is
    ``Store.to_dataframe()`` (or a :class:`Store`, or the path of one). ``table.attrs["columns"]``
    maps each value column to its ``kind``, ``name`` and ``params``.
    """
    import pandas as pd

    rows = _as_frame(frame)
    labels = _column_labels(rows)
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    failures: dict[tuple[str, str, str], list[str]] = {}
    for r in rows.itertuples(index=False):
        ident = (r.model, r.source, r.dataset)
        rec = records.setdefault(ident, {})
        failures.setdefault(ident, [])
        secs = _number(r.seconds)
        if not math.isnan(secs):
            rec[SECONDS] = rec.get(SECONDS, 0.0) + secs
        label = labels.get((r.kind, r.name, r.pkey))
        if r.status == "ok" and r.kind != "failure":
            rec[label] = r.value
        else:
            what = label or r.name
            failures[ident].append(f"{what}: {_first_line(r.error) or 'failed (no error text)'}")
    params_of = dict(zip(zip(rows["kind"], rows["name"], rows["pkey"]), rows["params"]))
    meta = {label: {"kind": k, "name": n, "params": params_of[(k, n, pkey)]} for (k, n, pkey), label in labels.items()}

    def order(label: str) -> tuple:
        m = meta[label]
        rank = {"accuracy": 0, "attack": 1, "measure": 2}.get(m["kind"], 3)
        return (rank, 0 if label == CLEAN else 1, m["name"], _eps_of(m["params"]) if m["kind"] == "attack" else 0, label)

    value_cols = sorted(meta, key=order)
    out = []
    for ident in sorted(records, key=lambda i: (i[2], i[1], i[0])):
        rec = records[ident]
        out.append({**dict(zip(ID_COLUMNS, ident)), **{c: rec.get(c, math.nan) for c in value_cols},
                    SECONDS: rec.get(SECONDS, math.nan), FAILURES: "; ".join(failures[ident])})
    table = pd.DataFrame(out, columns=[*ID_COLUMNS, *value_cols, SECONDS, FAILURES])
    for c in value_cols + [SECONDS]:
        table[c] = table[c].astype(float)
    table.attrs["columns"] = {c: meta[c] for c in value_cols}
    return table


def _columns_of(table, kind: str) -> list[str]:
    return [c for c, m in table.attrs.get("columns", {}).items() if m["kind"] == kind and c in table.columns]


# -- figures -------------------------------------------------------------------------------------


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit].strip("-").lower() or "x"


def _corr_text(c: Correlation) -> str:
    if c.reason:
        return f"\u03c1, \u03c4 undefined: {c.reason}"

    def ci(v: float, lo_hi: tuple[float, float]) -> str:
        lo, hi = lo_hi
        return f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else f"{v:+.2f}"

    return f"\u03c1 = {ci(c.spearman, c.spearman_ci)}   \u03c4 = {ci(c.kendall, c.kendall_ci)}   (n = {c.n})"


def _wrap(text: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _scatter(path: Path, sub, x_col: str, y_col: str, corr: Correlation, dataset: str) -> None:
    from matplotlib.figure import Figure

    x = sub[x_col].to_numpy(dtype=float)
    y = sub[y_col].to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    names = [str(m) for m in sub["model"].to_numpy()[keep]]
    x, y = x[keep], y[keep]
    fig = Figure(figsize=(6.0, 4.6), dpi=100)  # fixed margins: a layout engine would draw every figure twice
    fig.subplots_adjust(left=0.14, right=0.96, bottom=0.12, top=0.84)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=28, color="#1f6feb", edgecolor="white", linewidth=0.6, zorder=3)
    log = bool(len(x)) and bool(np.all(x > 0)) and x.max() / x.min() > 100
    if log:
        ax.set_xscale("log")
    pos = np.log10(x) if log else x
    span = (pos.max() - pos.min()) if len(pos) else 0.0
    for xi, yi, pi, name in zip(x, y, pos, names):
        right_side = span > 0 and (pi - pos.min()) / span > 0.7  # label to the left, so it stays inside the axes
        ax.annotate(name, (xi, yi), xytext=(-4 if right_side else 4, 3), textcoords="offset points", fontsize=7,
                    color="#333333", ha="right" if right_side else "left", parse_math=False)
    ax.margins(x=0.08, y=0.1)
    x_label = f"{x_col} (log scale)" if log else x_col
    ax.set_xlabel(x_label, parse_math=False)
    ax.set_ylabel(y_col, parse_math=False)
    ax.grid(True, color="#e5e7eb", zorder=0)
    ax.set_title(_wrap(f"{dataset}: {x_col} vs {y_col}", 80) + "\n" + _wrap(_corr_text(corr), 90), fontsize=9,
                 parse_math=False)
    fig.savefig(path)


def _landscape_groups(rows) -> list[tuple[str, str, str, list[tuple[str, dict]]]]:
    """(dataset, measure name, params key, [(model, details)]) for measure rows that carry a landscape."""
    groups: dict[tuple[str, str, str], list[tuple[str, dict]]] = {}
    ok = rows[(rows["kind"] == "measure") & (rows["status"] == "ok")]
    for r in ok.itertuples(index=False):
        d = r.details if isinstance(r.details, dict) else {}
        if isinstance(d.get("alphas"), list) and isinstance(d.get("losses"), list) and d["losses"]:
            groups.setdefault((r.dataset, r.name, r.pkey), []).append((r.model, d))
    return [(k[0], k[1], k[2], v) for k, v in sorted(groups.items())]


def _curve(values: Any) -> np.ndarray | None:
    try:
        arr = np.array([math.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 else None


def _surface(values: Any) -> np.ndarray | None:
    try:
        arr = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 2 else None


def _landscape_figure(path: Path, dataset: str, title: str, curves: list[tuple[str, dict]]) -> bool:
    """One figure for a landscape setting: 1-D curves of every model together, or one contour per model."""
    from matplotlib.figure import Figure

    two_d = isinstance(curves[0][1]["losses"][0], list)
    if not two_d:
        fig = Figure(figsize=(8.0, 4.4), dpi=100)
        fig.subplots_adjust(left=0.09, right=0.76, bottom=0.12, top=0.9)
        ax = fig.add_subplot()
        handles, names = [], []
        for model, d in curves:
            a, l = _curve(d["alphas"]), _curve(d["losses"])
            if a is None or l is None or a.shape != l.shape:
                continue
            (h,) = ax.plot(a, l, marker="o", markersize=2.5, linewidth=1.3)
            handles.append(h)
            names.append(model)
        if not handles:
            return False
        leg = ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        for t in leg.get_texts():
            t.set_parse_math(False)
        ax.set_xlabel("\u03b1 (step along the direction)")
        ax.set_ylabel("loss")
        ax.grid(True, color="#e5e7eb")
        ax.set_title(_wrap(f"{dataset}: {title}", 90), fontsize=9, parse_math=False)
        fig.savefig(path)
        return True
    usable = []
    for model, d in curves:
        a, b, z = _curve(d["alphas"]), _curve(d.get("betas", [])), _surface(d["losses"])
        if a is not None and b is not None and z is not None and z.shape == (a.size, b.size) and b.size > 1:
            usable.append((model, a, b, z))
    if not usable:
        return False
    cols = min(4, len(usable))
    rows_n = math.ceil(len(usable) / cols)
    fig = Figure(figsize=(3.2 * cols + 0.6, 2.9 * rows_n + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False)
    for ax, (model, a, b, z) in zip(axes.flat, usable):
        cs = ax.contourf(b, a, z, levels=14, cmap="viridis")
        ax.plot([0], [0], marker="+", color="white", markersize=8)
        fig.colorbar(cs, ax=ax, shrink=0.85)
        ax.set_title(model, fontsize=8, parse_math=False)
        ax.set_xlabel("\u03b2", fontsize=8)
        ax.set_ylabel("\u03b1", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(usable):]:
        ax.set_axis_off()
    fig.suptitle(_wrap(f"{dataset}: {title} (loss)", 110), fontsize=9, parse_math=False)
    fig.savefig(path)
    return True


# -- HTML ----------------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: Any, kind: str) -> str:
    v = _number(value)
    if math.isnan(v):
        return '<td class="na">\u2014</td>'
    text = f"{v:.3f}" if kind in ("accuracy", "attack") else f"{v:.1f}" if kind == "seconds" else f"{v:.4g}"
    return f'<td class="num">{text}</td>'


def _model_table(table) -> str:
    meta = table.attrs.get("columns", {})
    cols = [c for c in table.columns if c not in ID_COLUMNS]
    head = "".join(f"<th>{_e(c)}</th>" for c in (*ID_COLUMNS, *cols))
    body = []
    for _, row in table.iterrows():
        cells = [f"<td>{_e(row[c])}</td>" for c in ID_COLUMNS]
        for c in cols:
            if c == FAILURES:
                cells.append(f'<td class="fail">{_e(row[c])}</td>' if row[c] else "<td></td>")
            else:
                cells.append(_cell(row[c], meta.get(c, {}).get("kind", "seconds")))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _ci_html(v: float, lo_hi: tuple[float, float]) -> str:
    if math.isnan(v):
        return '<td class="na">\u2014</td>'
    lo, hi = lo_hi
    interval = f" [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else ""
    strong = not math.isnan(lo) and (lo > 0 or hi < 0)
    return f'<td class="num{" strong" if strong else ""}">{v:+.2f}{interval}</td>'


def _provenance(rows) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    for dataset, sub in rows.groupby("dataset", sort=True):
        items: list[tuple[str, str]] = []
        models = sorted(set(sub["model"]))
        items.append(("models", f"{len(models)} ({', '.join(sorted(set(sub['source'])))} source"
                                f"{'s' if len(set(sub['source'])) > 1 else ''})"))
        for label, keys in (("samples (n)", _SAMPLE_KEYS), ("data", _DATA_KEYS)):
            found = sorted({_fmt_param(k, d[k]) for col in ("params", "details") for d in sub[col]
                            if isinstance(d, dict) for k in keys if k in d and d[k] is not None})
            items.append((label, ", ".join(found) if found else "not recorded"))
        for kind, label in (("attack", "attack settings"), ("measure", "measure settings"), ("accuracy", "accuracy settings")):
            part = sub[sub["kind"] == kind]
            found = sorted({f"{n} ({_settings_text(p)})" for n, p in zip(part["name"], part["params"])})
            if found:
                items.append((label, "; ".join(found)))
        devices = sorted({str(d) for d in sub["device"] if isinstance(d, str) and d})
        items.append(("device", ", ".join(devices) if devices else "not recorded"))
        versions: dict[str, set[str]] = {}
        for v in sub["versions"]:
            if isinstance(v, dict):
                for k, val in v.items():
                    versions.setdefault(str(k), set()).add(str(val))
        items.append(("versions", "; ".join(f"{k} {' / '.join(sorted(vals))}" for k, vals in sorted(versions.items()))
                      or "not recorded"))
        secs = [s for s in (_number(x) for x in sub["seconds"]) if not math.isnan(s)]
        if secs:
            items.append(("compute time", f"{sum(secs):.1f} s over {len(secs)} results"))
        created = [c for c in (_number(x) for x in sub["created"]) if not math.isnan(c)]
        if created:
            fmt = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: E731
            items.append(("scored", f"{fmt(min(created))} to {fmt(max(created))}"))
        out.append((str(dataset), items))
    return out


def _flatplug_version() -> str:
    try:
        from importlib.metadata import version

        return version("flatplug")
    except Exception:
        return "unknown"


def build_report(store_or_frame: Any, out_dir: str | os.PathLike, *, title: str | None = None,
                 n_boot: int = 1000, seed: int = 0) -> Path:
    """Write ``out_dir/index.html``: correlations of every measure with robust and clean accuracy
    (Spearman rho, Kendall tau-b, bootstrap 95% intervals over models; one scatter PNG per pair,
    models labelled), the per-model table, loss-landscape curves when present, failures with their
    errors and the provenance (dataset, n, settings, device, versions). Also writes ``summary.csv``
    and ``correlations.csv``. The page links only to files beside it. Returns the page's path.
    """
    rows = _as_frame(store_or_frame)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{_FIGURE_PREFIX}*.png"):  # figures of an earlier report in the same folder
        old.unlink()
    table = summary_table(rows)
    table.to_csv(out / "summary.csv", index=False)
    title = title or "flatplug report: flatness versus robustness"
    fig_count = 0

    def fig_path(*parts: str) -> Path:
        nonlocal fig_count
        fig_count += 1
        return out / f"{_FIGURE_PREFIX}{fig_count:03d}-{'-'.join(_slug(p) for p in parts)}.png"

    measures = _columns_of(table, "measure")
    targets = _columns_of(table, "attack") + _columns_of(table, "accuracy")
    corr_rows, figures = [], []
    for dataset, sub in table.groupby("dataset", sort=True):
        for m in measures:
            if not sub[m].notna().any():
                continue
            for t in targets:
                if not sub[t].notna().any():
                    continue
                c = correlations(sub, m, t, n_boot=n_boot, seed=seed)
                path = fig_path(str(dataset), m, "vs", t)
                _scatter(path, sub, m, t, c, str(dataset))
                corr_rows.append((str(dataset), c, path.name))
                figures.append((str(dataset), path.name, f"{m} against {t} on {dataset}: {_corr_text(c)}"))
    import pandas as pd

    pd.DataFrame([{"dataset": d, **c.as_dict(), "figure": f} for d, c, f in corr_rows],
                 columns=["dataset", "x", "y", "n", "spearman", "kendall", "n_boot", "n_boot_valid", "reason",
                          "spearman_lo", "spearman_hi", "kendall_lo", "kendall_hi", "figure"]
                 ).to_csv(out / "correlations.csv", index=False)

    landscapes = []
    labels = _column_labels(rows)
    for dataset, name, pkey, curves in _landscape_groups(rows):
        label = labels.get(("measure", name, pkey), name)
        path = fig_path(dataset, label, "landscape")
        settings = _settings_text(json.loads(pkey))
        if _landscape_figure(path, dataset, f"{name} ({settings})", curves):
            landscapes.append((dataset, path.name, f"{label} on {dataset} ({settings}): {len(curves)} models"))

    failed = rows[rows["status"] != "ok"]
    n_models = len(table)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(rows)} results for {n_models} model{"s" if n_models != 1 else ""} on '
        f'{rows["dataset"].nunique()} dataset{"s" if rows["dataset"].nunique() != 1 else ""}; '
        f"{len(failed)} failure{'s' if len(failed) != 1 else ''}. Written by flatplug {_e(_flatplug_version())} on "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
        '<nav><a href="#correlations">Correlations</a><a href="#figures">Figures</a><a href="#models">Models</a>'
        '<a href="#landscapes">Landscapes</a><a href="#failures">Failures</a><a href="#provenance">Data and settings</a></nav>',
        '<h2 id="correlations">Does flatness predict robustness?</h2>',
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
            parts.append(f"<tr><td>{_e(d)}</td><td>{_e(c.x)}</td><td>{_e(c.y)}</td><td class=\"num\">{c.n}</td>"
                         f"{_ci_html(c.spearman, c.spearman_ci)}{_ci_html(c.kendall, c.kendall_ci)}"
                         f"<td>{_e(c.reason or '')}</td><td><a href=\"{_e(f)}\">png</a></td></tr>")
        parts.append("</tbody></table></div>")
    else:
        parts.append('<p class="note">No measure and accuracy were both scored: nothing to correlate.</p>')
    parts.append('<h2 id="figures">Figures</h2>')
    if figures:
        for dataset in sorted({d for d, _, _ in figures}):
            parts.append(f"<h3>{_e(dataset)}</h3><div class=\"figs\">")
            for d, name, caption in figures:
                if d == dataset:
                    parts.append(f'<figure><img src="{_e(name)}" alt="{_e(caption)}" loading="eager">'
                                 f"<figcaption>{_e(caption)}</figcaption></figure>")
            parts.append("</div>")
    else:
        parts.append('<p class="note">No figures: no measure was scored together with an accuracy.</p>')
    parts.append('<h2 id="models">Per-model results</h2>')
    parts.append('<p class="note">Accuracies are fractions; robust columns name the attack and its eps; '
                 "a measure with several settings gets one column per setting. \u2014: not scored or failed.</p>")
    for dataset, sub in table.groupby("dataset", sort=True):
        sub = sub.copy()
        sub.attrs = table.attrs
        keep = [c for c in sub.columns if c in ID_COLUMNS or c == FAILURES or sub[c].notna().any()]
        parts.append(f"<h3>{_e(dataset)}</h3>{_model_table(sub[keep])}")
    if table.empty:
        parts.append('<p class="note">The store holds no results.</p>')
    parts.append('<h2 id="landscapes">Loss landscapes</h2>')
    if landscapes:
        parts.append('<div class="figs">')
        for d, name, caption in landscapes:
            parts.append(f'<figure class="wide"><img src="{_e(name)}" alt="{_e(caption)}" loading="eager">'
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        parts.append("</div>")
    else:
        parts.append('<p class="note">No landscape curves in the store (measure loss_landscape not scored).</p>')
    parts.append('<h2 id="failures">Failures</h2>')
    if len(failed):
        parts.append('<div class="wrap"><table><thead><tr><th>model</th><th>source</th><th>dataset</th><th>what</th>'
                     "<th>settings</th><th>error</th></tr></thead><tbody>")
        for r in failed.itertuples(index=False):
            what = r.kind if r.kind == r.name else f"{r.kind} {r.name}"
            parts.append(f"<tr><td>{_e(r.model)}</td><td>{_e(r.source)}</td><td>{_e(r.dataset)}</td><td>{_e(what)}</td>"
                         f"<td>{_e(_settings_text(r.params))}</td><td><pre class=\"error\">{_e(r.error or 'no error text recorded')}</pre></td></tr>")
        parts.append("</tbody></table></div>")
    else:
        parts.append('<p class="note">Nothing failed.</p>')
    parts.append('<h2 id="provenance">Data and settings</h2>')
    for dataset, items in _provenance(rows):
        parts.append(f"<h3>{_e(dataset)}</h3><dl class=\"prov\">")
        parts.extend(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
        parts.append("</dl>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
