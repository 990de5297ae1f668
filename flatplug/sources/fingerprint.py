"""Content fingerprints: what a stored result was computed from, as SHA-256 hex digests.

* :func:`file_sha256`: a file's bytes (``sha256sum`` gives the same digest), cached by
  (resolved path, size, mtime, ctime, inode) in memory and in ``$FLATPLUG_CACHE/fingerprints.json``,
  so a 150 MB checkpoint is read once, not on every run;
* :func:`data_fingerprint`: the selected samples themselves (the bytes of the float images as
  they reach the model, their shape and dtype, and the labels), so two archives of the same name
  with other images, or another subset, never share a fingerprint;
* :func:`module_fingerprint`: an in-memory model: every parameter and buffer (names, shapes,
  dtypes, bytes; non-persistent buffers such as a normalisation's mean and std included) and the
  class of every submodule;
* :func:`combine`: one digest over several labelled parts (a checkpoint's digest and the
  architecture that reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["clear_cache", "combine", "data_fingerprint", "file_sha256", "files_fingerprint", "module_fingerprint",
           "tensor_digest"]

_CHUNK = 8 << 20
_MEMORY: "OrderedDict[tuple[str, int, int, int, int], str]" = OrderedDict()
_MEMORY_LIMIT = 4096
_LOCK = threading.Lock()


def _cache_file() -> Path:
    from .demo import cache_dir

    return cache_dir() / "fingerprints.json"


def _disk_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_disk(key: str, digest: str) -> None:
    """Add one entry to the on-disk cache (atomic replace; a failure only costs a rehash later)."""
    try:
        data = _disk_cache()
        data[key] = digest
        if len(data) > _MEMORY_LIMIT:
            data = dict(list(data.items())[-_MEMORY_LIMIT:])
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


def clear_cache(*, disk: bool = False) -> None:
    """Forget the file digests this process computed (and, with ``disk=True``, the on-disk cache)."""
    with _LOCK:
        _MEMORY.clear()
    if disk:
        try:
            _cache_file().unlink()
        except OSError:
            pass


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, cached by (resolved path, size, mtime, ctime, inode)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)  # ctime and inode: a rewrite shows
    text_key = "|".join(map(str, key))
    with _LOCK:
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            return _MEMORY[key]
    digest = _disk_cache().get(text_key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        _save_disk(text_key, digest)
    with _LOCK:
        _MEMORY[key] = digest
        while len(_MEMORY) > _MEMORY_LIMIT:
            _MEMORY.popitem(last=False)
    return digest


def combine(**parts: Any) -> str:
    """One SHA-256 over labelled parts (sorted by label; values as canonical JSON)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def files_fingerprint(paths: Iterable[str | os.PathLike], **extra: Any) -> str:
    """One digest over several files' SHA-256 (in the given order) and ``extra`` parts."""
    return combine(files=[file_sha256(p) for p in paths], **extra)


def _update(h: "hashlib._Hash", name: str, t: torch.Tensor) -> None:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                 else t.to(torch.uint8).numpy().tobytes())


def tensor_digest(**tensors: torch.Tensor) -> str:
    """SHA-256 over named tensors: names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        _update(h, name, tensors[name])
    return h.hexdigest()


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """The selected samples: the images' bytes, shape and dtype, and the labels (as int64)."""
    return tensor_digest(x=x, y=torch.as_tensor(y).to(torch.long))


def module_fingerprint(module: nn.Module) -> str:
    """Every parameter and buffer of ``module`` (non-persistent buffers included) and its submodules' classes."""
    h = hashlib.sha256()
    seen: set[int] = set()
    for kind, items in (("p", module.named_parameters()), ("b", module.named_buffers())):
        for name, t in items:
            if id(t) in seen:
                continue
            seen.add(id(t))
            _update(h, f"{kind}:{name}", t)
    for name, sub in module.named_modules():
        h.update(f"m:{name}:{type(sub).__module__}.{type(sub).__qualname__}|".encode())
    return h.hexdigest()
