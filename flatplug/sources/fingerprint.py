"""Content fingerprints: what a stored result was computed from, as SHA-256 hex digests.

* :func:`file_sha256`: a file's bytes (``sha256sum`` gives the same digest), cached by
  (resolved path, size, mtime, ctime, inode) in memory and in ``$FLATPLUG_CACHE/fingerprints.json``,
  so a 150 MB checkpoint is read once, not on every run;
* :func:`data_fingerprint`: the selected samples themselves (the bytes of the float images as
  they reach the model, their shape and dtype, and the labels), so two archives of the same name
  with other images, or another subset, never share a fingerprint;
* :func:`module_fingerprint`: an in-memory model: every parameter, buffer and other state
  (names, shapes, dtypes, bytes; non-persistent buffers and plain tensor attributes such as a
  normalisation's mean and std included) and every submodule's class, ``extra_repr()`` and plain
  settings (not the code of ``forward``);
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

__all__ = ["clear_cache", "combine", "data_fingerprint", "describe_setting", "file_sha256", "files_fingerprint",
           "module_fingerprint", "tensor_digest"]

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
    if t.is_quantized:  # the integer values and the quantisation parameters
        scales = (t.q_per_channel_scales(), t.q_per_channel_zero_points()) if t.qscheme() in (
            torch.per_channel_affine, torch.per_channel_symmetric) else (torch.tensor(t.q_scale()),
                                                                         torch.tensor(t.q_zero_point()))
        h.update(f"{name}|{t.dtype}|{t.qscheme()}|".encode())
        for i, part in enumerate((t.int_repr(), *scales)):
            _update(h, f"{name}#{i}", part)
        return
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
    """What ``module`` computes with: every parameter and buffer (non-persistent buffers included),
    every other ``state_dict`` entry (quantized packed weights, extra state), and per submodule its
    class, its ``extra_repr()`` (a LeakyReLU's slope, a convolution's stride and padding, a
    Dropout's p) and its plain attributes: tensors that are neither parameters nor buffers (such as
    a normalisation's ``self.mean = torch.tensor(...)``) and numbers, strings and tuples of them.
    The code of ``forward`` is not covered: a model whose class changed its code keeps its digest."""
    h = hashlib.sha256()
    seen: set[int] = set()
    for kind, items in (("p", module.named_parameters()), ("b", module.named_buffers())):
        for name, t in items:
            if id(t) in seen:
                continue
            seen.add(id(t))
            _update(h, f"{kind}:{name}", t)
    for name, value in module.state_dict(keep_vars=True).items():
        if isinstance(value, torch.Tensor):
            if id(value) not in seen:
                seen.add(id(value))
                _update(h, f"s:{name}", value)
        else:
            h.update(f"s:{name}:{_plain(value)}|".encode())
    for name, sub in module.named_modules():
        h.update(f"m:{name}:{type(sub).__module__}.{type(sub).__qualname__}:{sub.extra_repr()}|".encode())
        for attr, value in sorted(vars(sub).items()):
            if attr.startswith("_") or attr == "training":
                continue
            if isinstance(value, torch.Tensor):
                if id(value) not in seen:
                    seen.add(id(value))
                    _update(h, f"a:{name}.{attr}", value)
            elif _is_plain(value):
                h.update(f"a:{name}.{attr}:{value!r}|".encode())
    return h.hexdigest()


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_is_plain(v) for v in value)


def _plain(value: Any) -> str:
    """A state_dict entry that is not a tensor (a module's extra state, packed parameters), as text."""
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    if isinstance(value, torch.Tensor):
        return tensor_digest(t=value)
    return json.dumps(value, sort_keys=True, default=repr)


def describe_setting(obj: Any, depth: int = 0) -> Any:
    """A JSON description of a setting that is not plain JSON, the same in every process, for the
    store's keys: a torch module by its class and :func:`module_fingerprint` (a class-weighted or
    label-smoothed loss differs from the plain one, where their ``repr`` is the same), a function by
    its qualified name and a digest of its code, constants, defaults and closure, a
    ``functools.partial`` by its parts, any other object by its class, the code of its ``__call__``
    and its plain attributes. Never a ``repr`` with a memory address."""
    import functools
    import types

    if depth > 8:
        raise TypeError("params: a setting nests too deeply to be keyed; pass plain values, functions or modules")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [describe_setting(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe_setting(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, torch.Tensor):
        return {"tensor": tensor_digest(t=obj)}
    if isinstance(obj, nn.Module):
        return {"module": _qualname(type(obj)), "content": module_fingerprint(obj)}
    if isinstance(obj, functools.partial):
        return {"partial": describe_setting(obj.func, depth + 1), "args": describe_setting(obj.args, depth + 1),
                "keywords": describe_setting(obj.keywords, depth + 1)}
    if isinstance(obj, types.MethodType):
        return {"method": describe_setting(obj.__func__, depth + 1), "of": describe_setting(obj.__self__, depth + 1)}
    if isinstance(obj, types.FunctionType):
        closure = [describe_setting(c.cell_contents, depth + 1) for c in (obj.__closure__ or ())]
        return {"function": _qualname(obj), "code": _code_digest(obj.__code__),
                "defaults": describe_setting(obj.__defaults__ or (), depth + 1),
                "kwdefaults": describe_setting(obj.__kwdefaults__ or {}, depth + 1), "closure": closure}
    if isinstance(obj, (types.BuiltinFunctionType, type)) or (callable(obj) and not hasattr(obj, "__dict__")):
        return {"callable": _qualname(obj)}
    if hasattr(obj, "tolist"):
        return obj.tolist()
    attrs = {k: v for k, v in sorted(vars(obj).items()) if not k.startswith("_")} if hasattr(obj, "__dict__") else {}
    call = getattr(type(obj), "__call__", None)
    return {"object": _qualname(type(obj)), "attributes": describe_setting(attrs, depth + 1),
            "call": _code_digest(call.__code__) if isinstance(call, types.FunctionType) else None}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None) or ''}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"


def _code_digest(code: Any) -> str:
    """SHA-256 over a code object's bytecode, names and constants (nested code objects included)."""
    h = hashlib.sha256()

    def walk(c: Any) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        for const in c.co_consts:
            if hasattr(const, "co_code"):
                walk(const)
            else:
                h.update(repr(const).encode())

    walk(code)
    return h.hexdigest()
