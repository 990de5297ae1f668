"""What a job scores: a model and a data set, each behind one small interface.

A *model reference* has ``name``, ``source``, ``check()``, ``load(device) -> LoadedModel`` and
``fingerprint(loaded=None) -> str | None``: :class:`ModelSpec` (a registered source and a name,
loaded by whichever process runs the job) and :class:`InMemoryModel` (a ready ``LoadedModel``).
A *data reference* has ``key``, ``load() -> (x, y)``, ``fingerprint()`` and ``describe()``:
:class:`DatasetSpec` (a registered dataset, loaded where the job runs) and :class:`TensorData`
(tensors in memory). Scoring and executors use only these methods, never the concrete class.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import plugins
from ..sources.fingerprint import data_fingerprint, file_sha256, module_fingerprint
from ..sources.titles import title as dataset_title
from ..types import LoadedModel

#: How many loaded datasets a process keeps (a worker scoring many models loads its data once).
DATA_CACHE_SIZE = 2


@dataclass(frozen=True)
class ModelSpec:
    """A model a worker can load by itself: a registered source, its options, and a name."""

    source: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, source: str, name: str, **options: Any) -> "ModelSpec":
        return cls(source, name, tuple(sorted(options.items())))

    def _source(self) -> Any:
        return plugins.get("sources", self.source)(**dict(self.options))

    def check(self) -> None:
        """Fail now (with the closest name) when the source is not registered."""
        plugins.get("sources", self.source)

    def load(self, device: str | torch.device) -> LoadedModel:
        return self._source().load(self.name, device=device)

    def fingerprint(self, loaded: LoadedModel | None = None) -> str | None:
        """The model's content: the source's ``fingerprint(name)`` (checkpoint files) when it has one
        and can say without loading (not None), else the loaded module's parameters and buffers;
        None when neither is available without loading."""
        source = self._source()
        own = getattr(source, "fingerprint", None)
        digest = own(self.name) if callable(own) else None
        if digest is not None:
            return str(digest)
        return module_fingerprint(loaded.module) if loaded is not None else None


@dataclass
class InMemoryModel:
    """A ready :class:`~flatplug.LoadedModel`; its fingerprint is that of its parameters and buffers."""

    loaded: LoadedModel

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def source(self) -> str:
        return str(self.loaded.metadata.get("source") or "inline")

    def check(self) -> None:
        pass

    def load(self, device: str | torch.device) -> LoadedModel:
        return self.loaded

    def fingerprint(self, loaded: LoadedModel | None = None) -> str:
        return module_fingerprint(self.loaded.module)


class _LoadedData:
    """Loaded tensors with their fingerprint, computed once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: dict[str, Any]):
        self.x, self.y, self.info = x, y, info
        self.fingerprint = data_fingerprint(x, y)


_CACHE: "OrderedDict[tuple, _LoadedData]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _file_state(path: str | None) -> tuple:
    """What a dataset path holds, cheaply: a file's size, mtime, ctime and inode (a file replaced or
    rewritten in place changes its ctime), or for a folder a digest of every file's under it (a
    folder's own mtime does not change when a file inside is rewritten)."""
    if path is None:
        return ()
    try:
        p = Path(path)
        st = p.stat()
        if not p.is_dir():
            return (str(p.resolve()), *_stat_key(st))
        h = hashlib.sha256()
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(f"{os.path.relpath(full, p)}|{_stat_key(os.stat(full))}|".encode())
        return (str(p.resolve()), h.hexdigest())
    except OSError:
        return (path,)


def clear_data_cache() -> None:
    """Forget every loaded dataset of this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset, its path and options, and the subset (``n``, ``seed``).

    Loaded data are kept in a small per-process cache (:data:`DATA_CACHE_SIZE` entries, keyed by
    these settings and the state of the path: a file's size, mtime, ctime and inode, every file's
    under a folder; so a changed file is read again).
    """

    name: str
    path: str | None = None
    n: int | None = None
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        where = f"[{Path(self.path).name}]" if self.path else ""
        return f"{self.name}{where}:n={self.n if self.n is not None else 'all'},seed={self.seed}"

    def _loaded(self) -> _LoadedData:
        cache_key = (self.name, self.path, self.n, self.seed, repr(self.options), _file_state(self.path))
        with _CACHE_LOCK:
            if cache_key in _CACHE:
                _CACHE.move_to_end(cache_key)
                return _CACHE[cache_key]
        loader = plugins.get("datasets", self.name)
        kwargs: dict[str, Any] = dict(self.options)
        if self.path is not None:
            kwargs["path"] = self.path
        out = loader(n=self.n, seed=self.seed, **kwargs)
        x, y = out[:2]
        info: dict[str, Any] = {"dataset": self.name, "path": self.path, "n": int(len(y)), "seed": self.seed,
                                "title": getattr(out, "title", "") or dataset_title(self.name, kwargs.get("split")),
                                "from": getattr(out, "source", None)}
        if self.options:
            info["options"] = dict(self.options)
        if self.path is not None and os.path.isfile(self.path):
            info["file_sha256"] = file_sha256(self.path)
        loaded = _LoadedData(x, y, info)
        with _CACHE_LOCK:
            _CACHE[cache_key] = loaded
            while len(_CACHE) > DATA_CACHE_SIZE:
                _CACHE.popitem(last=False)
        return loaded

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self._loaded()
        return d.x, d.y

    def fingerprint(self) -> str:
        """SHA-256 over the selected samples' bytes and labels (see ``flatplug.sources.fingerprint``)."""
        return self._loaded().fingerprint

    def describe(self) -> dict[str, Any]:
        """What the report shows: title, loader, path, n, seed, where the images came from, file SHA-256."""
        return dict(self._loaded().info)


@dataclass
class TensorData:
    """Images and labels already in memory, under a name (the store's ``dataset`` column)."""

    key: str
    x: torch.Tensor
    y: torch.Tensor
    title: str = ""
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def __getitem__(self, index: int) -> Any:
        """``data[0]``, ``data[1]``, ``data[2]``: the name, images and labels, as the ``(name, x, y)`` tuple it replaces."""
        return (self.key, self.x, self.y)[index]

    def __len__(self) -> int:
        return 3

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.x, self.y)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.key, "title": self.title or self.key, "n": int(len(self.y)),
                "from": "tensors in memory"}


def as_model(model: Any) -> Any:
    """A model reference from a :class:`ModelSpec` (kept) or a ``LoadedModel`` (wrapped)."""
    if isinstance(model, LoadedModel):
        return InMemoryModel(model)
    if not all(hasattr(model, a) for a in ("name", "source", "load", "fingerprint")):
        raise TypeError(f"models: expected ModelSpec or LoadedModel objects, got {type(model).__name__}")
    return model


def as_data(dataset: Any) -> Any:
    """A data reference from a :class:`DatasetSpec`, a ``TensorData``, ``(x, y)`` or ``(name, x, y)``."""
    if hasattr(dataset, "load") and hasattr(dataset, "fingerprint") and hasattr(dataset, "key"):
        return dataset
    if isinstance(dataset, (tuple, list)) and len(dataset) in (2, 3):
        name, x, y = ("custom", *dataset) if len(dataset) == 2 else dataset
        return TensorData(str(name), x, y, title=getattr(dataset, "title", ""))
    raise TypeError(f"dataset: expected a DatasetSpec, (x, y) or (name, x, y), got {type(dataset).__name__}")
