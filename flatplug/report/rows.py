"""Reading a store's rows for the report: parsing, content identity, superseded rows, and labels.

Rows are grouped by what they were computed from. A dataset name whose rows come from several
data fingerprints (two archives called ``test.tar.gz`` with other images) becomes one group per
fingerprint, labelled ``<dataset> @data:<fingerprint>``. A model scored with several weights under
one name keeps its newest weights in the tables and correlations; the older rows are *superseded*
and listed apart, never silently mixed.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ..store import Store, canonical_params

ID_COLUMNS = ("model", "source", "dataset")
FINGERPRINTS = ("model_fingerprint", "data_fingerprint")
CLEAN = "clean_accuracy"
SECONDS = "seconds"
FAILURES = "failures"
_REQUIRED = ("model", "source", "dataset", "kind", "name", "params", "value")
_OPTIONAL = {"details": dict, "seconds": None, "device": None, "versions": dict, "status": "ok", "error": None,
             "created": None, "model_fingerprint": "", "data_fingerprint": "", "impl_version": ""}
SHORT = 12  # hex digits of a fingerprint shown to readers


def as_frame(store_or_frame: Any, *, superseded: bool = False):
    """Rows from a DataFrame, a :class:`Store` or the path of a store file, normalised (see :func:`normalise`)."""
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
    rows = normalise(frame)
    return rows if superseded else rows[~rows["superseded"]].reset_index(drop=True)


def json_field(value: Any, default: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else default
        except json.JSONDecodeError:
            return default
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def number(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def short(fingerprint: Any) -> str:
    """The first :data:`SHORT` hex digits of a fingerprint, or ``"not recorded"``."""
    return str(fingerprint)[:SHORT] if isinstance(fingerprint, str) and fingerprint else "not recorded"


def normalise(frame):
    """Rows with parsed ``params``/``details``/``versions`` dicts, a ``pkey`` column, one row per key (the
    newest), ``dataset`` split by data fingerprint where needed, and a ``superseded`` column."""
    import pandas as pd

    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"the results frame lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                         "pass Store.to_dataframe() or the DataFrame fp.score returns")
    f = frame.copy()
    for col, default in _OPTIONAL.items():
        if col not in f.columns:
            f[col] = [default() if callable(default) else default for _ in range(len(f))]
    f["params"] = [json_field(p, {}) for p in f["params"]]
    f["details"] = [json_field(d, {}) for d in f["details"]]
    f["versions"] = [json_field(v, {}) for v in f["versions"]]
    f["status"] = [s if isinstance(s, str) and s else "ok" for s in f["status"]]
    f["value"] = [number(v) for v in f["value"]]
    for col in ID_COLUMNS + ("kind", "name") + FINGERPRINTS + ("impl_version",):
        f[col] = [("" if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v)) for v in f[col]]
    f["pkey"] = [canonical_params(p if isinstance(p, dict) else {"value": p}) for p in f["params"]]
    if f["created"].notna().any():
        f = f.sort_values("created", kind="stable", na_position="first")
    # one row per (content, setting): the newest implementation version wins (compared as a version
    # within one plugin; between plugins, the one written last)
    key = list(ID_COLUMNS) + list(FINGERPRINTS) + ["kind", "name", "pkey"]
    f["_plugin"] = [str(v).rpartition(":")[0] for v in f["impl_version"]]
    f["_rank"] = [_version_rank(v) for v in f["impl_version"]]
    f = f.sort_values("_rank", kind="stable").drop_duplicates(subset=key + ["_plugin"], keep="last")
    order = "created" if f["created"].notna().any() else "_rank"
    f = f.sort_values(order, kind="stable", na_position="first").drop_duplicates(subset=key, keep="last")
    f = f.drop(columns=["_plugin", "_rank"]).reset_index(drop=True)
    # a column whose models were scored by different implementation versions is split by version
    # (the numbers of two versions are not comparable: a plugin bumps its version when they change)
    column = list(zip(f["dataset"], f["kind"], f["name"], f["pkey"]))
    versions: dict[tuple, set[str]] = {}
    for key, impl, status in zip(column, f["impl_version"], f["status"]):
        if status == "ok":
            versions.setdefault(key, set()).add(impl)
    f["pkey"] = [f"{pkey}\x1f{impl}" if len(versions.get(key, ())) > 1 else pkey
                 for key, pkey, impl in zip(column, f["pkey"], f["impl_version"])]
    f["dataset_key"] = f["dataset"]
    by_dataset = f.groupby("dataset")["data_fingerprint"].nunique()
    split = set(by_dataset[by_dataset > 1].index)
    f["dataset"] = [f"{d} @data:{short(fp)}" if d in split else d for d, fp in zip(f["dataset"], f["data_fingerprint"])]
    f["superseded"] = pd.Series(_superseded(f), index=f.index, dtype=bool)
    return f


def _version_rank(impl: str) -> tuple:
    """``plugin:version`` -> a sort key for versions of one plugin: the version's numeric parts
    (``"10" > "9"``)."""
    version = str(impl).rpartition(":")[2]
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-]", version))


def _superseded(f) -> list[bool]:
    """True for rows of older weights of a model: another fingerprint under the same name was scored
    later. Failed rows and rows without a model fingerprint (a load that failed before the weights were
    known) do not decide which weights are newest."""
    newest: dict[tuple, tuple[float, str]] = {}
    created = [number(c) for c in f["created"]]
    for ident, fp, t, status in zip(zip(f["model"], f["source"], f["dataset"]), f["model_fingerprint"], created,
                                    f["status"]):
        if status != "ok" or not fp:
            continue
        t = -math.inf if math.isnan(t) else t
        if ident not in newest or t >= newest[ident][0]:
            newest[ident] = (t, fp)
    return [ident in newest and bool(fp) and fp != newest[ident][1]
            for ident, fp in zip(zip(f["model"], f["source"], f["dataset"]), f["model_fingerprint"])]


# -- labels --------------------------------------------------------------------------------------


def is_eps(key: str) -> bool:
    """``eps``, ``eps_step``, ``attack_eps``: a perturbation radius (but not ``steps``)."""
    return re.search(r"(^|_)eps($|_)", key.lower()) is not None


def settings_text(params: Any) -> str:
    """``eps=8/255, steps=10``: settings as a reader writes them ("defaults" when there are none)."""
    if not isinstance(params, dict):
        return fmt_param("value", params)
    return ", ".join(f"{k}={fmt_param(k, v)}" for k, v in sorted(params.items())) or "defaults"


def fmt_param(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        v = float(value)
        k = v * 255
        if is_eps(key) and 0 < v <= 1 and abs(k - round(k)) < 1e-6 and round(k) >= 1 and not float(v).is_integer():
            return f"{int(round(k))}/255"
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return "; ".join(f"{v['name']}({settings_text({k: x for k, x in v.items() if k != 'name'})})" for v in value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def column_labels(rows) -> dict[tuple[str, str, str], str]:
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
        shown = ([k for k in all_keys if is_eps(k) and k not in differ] if kind == "attack" else []) + differ
        group = {}
        for pkey, params in by_key.items():
            parts = [f"{k}={fmt_param(k, params[k])}" for k in shown if k in params]
            impl = pkey.rpartition("\x1f")[2] if "\x1f" in pkey else ""  # a column split by implementation version
            group[pkey] = base + (f"[{', '.join(parts)}]" if parts else "") + (f" ({impl})" if impl else "")
        if len(set(group.values())) < len(group):  # formatting made two settings look alike: show them in full
            group = {pkey: f"{base}[{pkey}]" for pkey in by_key}
        for pkey, label in group.items():
            if label in taken:
                label = f"{kind}:{label}"
            taken.add(label)
            labels[(kind, name, pkey)] = label
    return labels


def first_line(text: Any, limit: int = 200) -> str:
    s = str(text or "").strip()
    line = next((ln.strip() for ln in s.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def eps_of(params: dict) -> float:
    for k, v in params.items():
        if is_eps(k) and isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return math.inf


def dataset_titles(rows) -> dict[str, str]:
    """Dataset group -> its usual name ("CIFAR-10 test set"), from the clean rows' ``details["data"]``."""
    out: dict[str, str] = {}
    for dataset, details in zip(rows["dataset"], rows["details"]):
        data = details.get("data") if isinstance(details, dict) else None
        if isinstance(data, dict) and data.get("title") and dataset not in out:
            out[dataset] = str(data["title"])
    return out
