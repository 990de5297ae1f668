"""The embedded results store: one SQLite file (WAL), one row per result, committed as it exists.

A row is keyed by (model, source, dataset, kind, name, params): ``kind`` is ``"accuracy"``
(clean accuracy), ``"attack"`` (robust accuracy under an attack) or ``"measure"``; ``params``
is the canonical JSON of the settings. A rerun asks :meth:`Store.has` and skips what is there;
each :meth:`Store.put` is its own transaction, so a killed process loses at most the row in flight.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import StoreError

SCHEMA_VERSION = 1
KINDS = ("accuracy", "attack", "measure", "failure")
COLUMNS = ("model", "source", "dataset", "kind", "name", "params", "value", "details", "seconds", "device",
           "versions", "status", "error", "created")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    value REAL,
    details TEXT NOT NULL DEFAULT '{}',
    seconds REAL,
    device TEXT,
    versions TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'ok',
    error TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (model, source, dataset, kind, name, params)
)
"""


def canonical_params(params: dict[str, Any] | None) -> str:
    """Settings as sorted, compact JSON: the same settings always give the same key."""
    return json.dumps(params or {}, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _clean(obj: Any) -> Any:
    """Details made JSON-safe: non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


class Store:
    """Results in one SQLite file; safe to open from several processes (WAL, one transaction per row)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"store {self.path} does not exist; score some models into it first")
            try:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
                version = self._conn.execute("PRAGMA user_version").fetchone()[0]
                self._conn.execute("SELECT COUNT(*) FROM results").fetchone()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"store {self.path} is not a flatplug results database ({exc})") from exc
            if version > SCHEMA_VERSION:
                raise StoreError(f"store {self.path} has schema version {version}, newer than this flatplug "
                                 f"understands ({SCHEMA_VERSION}); upgrade flatplug")
            return
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"store {self.path} is read-only; pass a writable --store path or fix its permissions")
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(self.path.parent, os.W_OK):
            raise StoreError(f"store folder {self.path.parent} is not writable; pass --store in a writable folder")
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store {self.path} is not a flatplug results database ({exc}); pass another --store path") from exc
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise StoreError(
                f"store {self.path} has schema version {version}, newer than this flatplug understands "
                f"({SCHEMA_VERSION}); upgrade flatplug or use another store"
            )
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            if version < SCHEMA_VERSION:
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"store {self.path} cannot be written ({exc}); pass a writable --store path") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------
    def put(self, *, model: str, source: str, dataset: str, kind: str, name: str, params: dict | None = None,
            value: float | None, details: dict | None = None, seconds: float | None = None,
            device: str | None = None, versions: dict | None = None, status: str = "ok",
            error: str | None = None) -> None:
        """Insert or replace one row, committed at once."""
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if value is not None and not math.isfinite(float(value)):
            details = {**(details or {}), "non_finite_value": repr(value)}
            value = None
        row = (model, source, dataset, kind, name, canonical_params(params),
               None if value is None else float(value), json.dumps(_clean(details or {}), default=_jsonable),
               seconds, device, json.dumps(versions or {}), status, error, time.time())
        try:
            self._conn.execute(f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(COLUMNS))})", row)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"store {self.path}: could not write a row ({exc}); is the disk full or the file read-only?") from exc

    def delete_failures(self, model: str, source: str, dataset: str) -> None:
        """Forget recorded failures of a model (a rerun tries it again)."""
        self._conn.execute("DELETE FROM results WHERE model=? AND source=? AND dataset=? AND status='failed'",
                           (model, source, dataset))

    # -- reading ---------------------------------------------------------------
    def has(self, *, model: str, source: str, dataset: str, kind: str, name: str, params: dict | None = None) -> bool:
        """Whether a successful row with this key exists (failures are retried on a rerun)."""
        cur = self._conn.execute(
            "SELECT 1 FROM results WHERE model=? AND source=? AND dataset=? AND kind=? AND name=? AND params=? "
            "AND status='ok'", (model, source, dataset, kind, name, canonical_params(params)))
        return cur.fetchone() is not None

    def rows(self, where: str = "", args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM results {where} ORDER BY created", tuple(args))
        out = []
        for values in cur.fetchall():
            row = dict(zip(COLUMNS, values))
            row["details"] = json.loads(row["details"])
            row["versions"] = json.loads(row["versions"])
            out.append(row)
        return out

    def to_dataframe(self):
        """Every row as a pandas DataFrame (``details`` and ``versions`` as dicts)."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
