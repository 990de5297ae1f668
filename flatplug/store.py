"""The embedded results store: one SQLite file (WAL), one row per result, committed as it exists.

A row is keyed by what it was computed from, not by names alone: (model, source, dataset,
``model_fingerprint``, ``data_fingerprint``, kind, name, ``impl_version``, params). ``kind`` is
``"accuracy"`` (clean accuracy), ``"attack"`` (robust accuracy under an attack; its details carry the
gradient-masking check), ``"measure"`` or ``"failure"``; the fingerprints are SHA-256 digests of
the model's content (its checkpoint files, or its parameters) and of the scored samples;
``impl_version`` is ``plugin:version`` of the measure or attack; ``params`` is the canonical JSON
of the settings. A rerun asks :meth:`Store.has` and skips exactly what is there; other weights or
images under the same names are computed afresh, and the old rows stay. Each :meth:`Store.put` is
its own transaction, so a killed process loses at most the row in flight.

Schema versions (``PRAGMA user_version``): 1 was written by flatplug 0.1.0 (rows keyed by names
only); 2 adds the fingerprints and versions, and marks the file as a flatplug store
(``PRAGMA application_id``). Opening a version-1 store for writing migrates it in place, after a
backup copy (``<store>.v1.bak``): its rows are kept as *legacy* rows (empty fingerprints and
version, shown as "not recorded") that no new run reuses. A SQLite file that is not a flatplug
store is refused, never given a table.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

from .errors import StoreError

SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a flatplug store ("FPLG").
APPLICATION_ID = 0x46504C47
KINDS = ("accuracy", "attack", "measure", "failure")
KEY = ("model", "source", "dataset", "model_fingerprint", "data_fingerprint", "kind", "name", "impl_version",
       "params")
COLUMNS = ("model", "source", "dataset", "model_fingerprint", "data_fingerprint", "kind", "name", "impl_version",
           "params", "value", "details", "seconds", "device", "versions", "status", "error", "created")
_V1_COLUMNS = ("model", "source", "dataset", "kind", "name", "params", "value", "details", "seconds", "device",
               "versions", "status", "error", "created")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL DEFAULT '',
    data_fingerprint TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    impl_version TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL,
    value REAL,
    details TEXT NOT NULL DEFAULT '{{}}',
    seconds REAL,
    device TEXT,
    versions TEXT NOT NULL DEFAULT '{{}}',
    status TEXT NOT NULL DEFAULT 'ok',
    error TEXT,
    created REAL NOT NULL,
    PRIMARY KEY ({', '.join(KEY)})
)
"""


class LegacyStoreWarning(UserWarning):
    """A store written by flatplug 0.1.0 was opened: its rows carry no fingerprints."""


def canonical_params(params: dict[str, Any] | None) -> str:
    """Settings as sorted, compact JSON: the same settings always give the same key."""
    return json.dumps(params or {}, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist") and not callable(obj):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    from .sources.fingerprint import describe_setting  # modules, functions, losses: by content, not repr

    return describe_setting(obj)


def _clean(obj: Any) -> Any:
    """Details made JSON-safe: non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {n: [c[1] for c in conn.execute(f"PRAGMA table_info('{n}')")] for n in names}


def _kind_of(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of a flatplug store (0: an empty database); anything else raises StoreError."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = _tables(conn)
    if app not in (0, APPLICATION_ID):
        raise StoreError(f"store {path} is an SQLite database of another application (application_id {app:#x}), "
                         "not a flatplug results store; pass another --store path")
    if version > SCHEMA_VERSION:
        raise StoreError(f"store {path} has schema version {version}, newer than this flatplug understands "
                         f"({SCHEMA_VERSION}); upgrade flatplug or use another store")
    if version == 0 and app == 0:
        if tables:
            raise StoreError(f"store {path} is an SQLite database but not a flatplug results store (it holds the "
                             f"table{'s' if len(tables) > 1 else ''} {', '.join(sorted(tables))}); pass another "
                             "--store path")
        return 0
    expected = set(_V1_COLUMNS if version == 1 else COLUMNS)
    if "results" not in tables or set(tables["results"]) != expected or (version == 1 and app != 0):
        raise StoreError(f"store {path} says it is a flatplug store (schema {version}) but its results table does "
                         "not have the expected columns; it was changed by another program; pass another --store path")
    return version


def _migrate_v1(conn: sqlite3.Connection, path: Path) -> int:
    """Schema 1 -> 2 in one transaction, after a backup copy; returns the number of legacy rows."""
    backup = path.with_name(path.name + ".v1.bak")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if not backup.exists():
        shutil.copy2(path, backup)
    n = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE results RENAME TO results_v1")
        conn.execute(_SCHEMA)
        cols = ", ".join(_V1_COLUMNS)
        conn.execute(f"INSERT INTO results ({cols}) SELECT {cols} FROM results_v1")
        conn.execute("DROP TABLE results_v1")
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    warnings.warn(f"store {path} was written by flatplug 0.1.0 (schema 1) and has been migrated to schema "
                  f"{SCHEMA_VERSION}; a copy of the original is {backup}. Its {n} rows carry no data or model "
                  "fingerprints: they are kept as legacy rows ('not recorded') and no new run reuses them",
                  LegacyStoreWarning, stacklevel=3)
    return n


class Store:
    """Results in one SQLite file; safe to open from several processes (WAL, one transaction per row).

    ``readonly=True`` opens an existing store through SQLite's read-only mode (a store on a
    read-only disk, or another user's, can be reported); a schema-1 store is then read as it is,
    with its rows shown as legacy rows.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self._open_readonly()
        else:
            self._open_writable()

    def _open_readonly(self) -> None:
        if not self.path.is_file():
            raise StoreError(f"store {self.path} does not exist; score some models into it first")
        try:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
            self.schema = _kind_of(self._conn, self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store {self.path} is not a flatplug results database ({exc})") from exc
        if self.schema == 0:
            raise StoreError(f"store {self.path} is empty (no results table); score some models into it first")
        if self.schema == 1:
            warnings.warn(f"store {self.path} was written by flatplug 0.1.0 (schema 1): its rows carry no data or "
                          "model fingerprints and are shown as legacy rows ('not recorded'); open it for writing "
                          "(any `flatplug score --store` run) to migrate it", LegacyStoreWarning, stacklevel=3)

    def _open_writable(self) -> None:
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"store {self.path} is read-only; pass a writable --store path or fix its permissions")
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(self.path.parent, os.W_OK):
            raise StoreError(f"store folder {self.path.parent} is not writable; pass --store in a writable folder")
        self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        try:
            version = _kind_of(self._conn, self.path)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"store {self.path} is not a flatplug results database ({exc}); pass another --store path") from exc
        except StoreError:
            self._conn.close()
            raise
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if version == 1:
                _migrate_v1(self._conn, self.path)
            self._conn.execute(_SCHEMA)
            if version == 0:
                self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise StoreError(f"store {self.path} cannot be written ({exc}); pass a writable --store path") from exc
        self.schema = SCHEMA_VERSION

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
            error: str | None = None, model_fingerprint: str = "", data_fingerprint: str = "",
            impl_version: str = "") -> None:
        """Insert or replace one row, committed at once (empty fingerprints/version: not recorded)."""
        if self.readonly:
            raise StoreError(f"store {self.path} was opened read-only; open it without readonly=True to write")
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if value is not None and not math.isfinite(float(value)):
            details = {**(details or {}), "non_finite_value": repr(value)}
            value = None
        row = (model, source, dataset, model_fingerprint or "", data_fingerprint or "", kind, name, impl_version or "",
               canonical_params(params), None if value is None else float(value),
               json.dumps(_clean(details or {}), default=_jsonable), seconds, device, json.dumps(versions or {}),
               status, error, time.time())
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
    def has(self, *, model: str, source: str, dataset: str, kind: str, name: str, params: dict | None = None,
            model_fingerprint: str = "", data_fingerprint: str = "", impl_version: str = "") -> bool:
        """Whether a successful row with this exact key exists (failures are retried on a rerun)."""
        cur = self._conn.execute(
            "SELECT 1 FROM results WHERE model=? AND source=? AND dataset=? AND model_fingerprint=? AND "
            "data_fingerprint=? AND kind=? AND name=? AND impl_version=? AND params=? AND status='ok'",
            (model, source, dataset, model_fingerprint or "", data_fingerprint or "", kind, name, impl_version or "",
             canonical_params(params)))
        return cur.fetchone() is not None

    def _select(self) -> str:
        if self.schema == 1:  # a legacy store read as it is: the new columns are empty
            return ", ".join("''" if c in ("model_fingerprint", "data_fingerprint", "impl_version") else c
                             for c in COLUMNS)
        return ", ".join(COLUMNS)

    def rows(self, where: str = "", args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(f"SELECT {self._select()} FROM results {where} ORDER BY created", tuple(args))
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
