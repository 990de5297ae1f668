"""A model zoo described by a JSON manifest: layer lists plus ``torch.save``d state_dicts.

The manifest maps a model name to ``file`` (a state_dict, relative to the manifest's folder),
``dataset``, ``input`` (``[C, H, W]``), ``mean``, ``std`` and ``layers``; ``training``, ``source``,
``threat_model`` and any other keys are optional and travel in the loaded model's metadata. The
loaded module takes [0, 1] images (the RobustBench convention): a ``Normalize`` module sits in
front of the network, and the state_dict keys are the manifest's layer indices (``"2.weight"``,
``"4.body.0.weight"``), so ``module.load_state_dict(torch.load(file))`` works as is.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ManifestError, UnknownModelError
from ..types import LoadedModel

REQUIRED_KEYS = ("file", "dataset", "input", "mean", "std", "layers")
MANIFEST_NAME = "zoo.json"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: lets a network trained on normalised inputs take [0, 1] images.

    ``mean`` and ``std`` are non-persistent buffers: they follow ``.to(device, dtype)`` but stay out of
    the state_dict, so the wrapped model's keys are exactly the network's.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"Normalize: mean and std need one value per channel, got {mean_t.numel()} and {std_t.numel()}")
        if not torch.isfinite(mean_t).all() or not (std_t > 0).all() or not torch.isfinite(std_t).all():
            raise ValueError(f"Normalize: std must be positive and finite and mean finite, got mean {mean_t.tolist()} and std {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"Normalize: expected images [N, {self.mean.shape[1]}, H, W], got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Residual(nn.Module):
    """``body(x) + shortcut(x)``; an empty ``shortcut`` is the identity."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def _ints(args: Any, count: int, where: str, kind: str, form: str) -> list[int]:
    if (not isinstance(args, list) or len(args) != count
            or not all(isinstance(a, int) and not isinstance(a, bool) for a in args)):
        raise ManifestError(f"{where}: {kind!r} takes {form}, got {args!r}")
    if any(a < 0 for a in args) or any(a == 0 for a in args[:2]):
        raise ManifestError(f"{where}: {kind!r} sizes must be positive, got {args!r}")
    return args


def _conv(args: Any, where: str) -> nn.Module:
    c_in, c_out, k, s, p = _ints(args, 5, where, "conv", "[in, out, kernel, stride, padding]")
    if k < 1 or s < 1:
        raise ManifestError(f"{where}: 'conv' kernel and stride must be at least 1, got {args!r}")
    return nn.Conv2d(c_in, c_out, k, stride=s, padding=p)


def _linear(args: Any, where: str) -> nn.Module:
    return nn.Linear(*_ints(args, 2, where, "linear", "[in, out]"))


def _maxpool(args: Any, where: str) -> nn.Module:
    if not isinstance(args, int) or isinstance(args, bool) or args < 1:
        raise ManifestError(f"{where}: 'maxpool' takes a positive integer kernel size, got {args!r}")
    return nn.MaxPool2d(args)


def _dropout(args: Any, where: str) -> nn.Module:
    if not isinstance(args, (int, float)) or isinstance(args, bool) or not 0 <= args < 1:
        raise ManifestError(f"{where}: 'dropout' takes a probability in [0, 1), got {args!r}")
    return nn.Dropout(float(args))


def _no_args(module: type[nn.Module], kind: str) -> Callable[[Any, str], nn.Module]:
    def build(args: Any, where: str) -> nn.Module:
        if args is not None:
            raise ManifestError(f"{where}: {kind!r} takes no arguments (null), got {args!r}")
        return module()
    return build


def _residual(args: Any, where: str) -> nn.Module:
    if not isinstance(args, dict) or set(args) - {"body", "shortcut"} or "body" not in args:
        raise ManifestError(f"{where}: 'residual' takes {{\"body\": [...], \"shortcut\": [...]}}, got {args!r}")
    body = _build(args["body"], f"{where}.residual.body")
    shortcut = _build(args.get("shortcut") or [], f"{where}.residual.shortcut")
    if len(body) == 0:
        raise ManifestError(f"{where}: a 'residual' body needs at least one layer")
    return Residual(body, shortcut)


#: Layer kind -> builder(args, where) -> module. The manifest format of ../shared/models/README.md.
LAYERS: dict[str, Callable[[Any, str], nn.Module]] = {
    "conv": _conv,
    "linear": _linear,
    "relu": _no_args(nn.ReLU, "relu"),
    "flatten": _no_args(nn.Flatten, "flatten"),
    "maxpool": _maxpool,
    "dropout": _dropout,
    "residual": _residual,
}


def _build(layers: Any, where: str) -> nn.Sequential:
    if not isinstance(layers, list):
        raise ManifestError(f"{where}: expected a list of layers, got {type(layers).__name__}")
    modules = []
    for i, entry in enumerate(layers):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ManifestError(f"{at}: each layer is a one-key object like {{\"relu\": null}}, got {entry!r}")
        (kind, args), = entry.items()
        if kind not in LAYERS:
            raise ManifestError(f"{at}: unknown layer kind {kind!r}; known kinds: {', '.join(LAYERS)}")
        modules.append(LAYERS[kind](args, at))
    return nn.Sequential(*modules)


def build_network(layers: list) -> nn.Sequential:
    """The ``nn.Sequential`` a manifest layer list describes (fresh weights; keys ``"<i>.weight"``).

    Kinds: ``conv [in, out, kernel, stride, padding]``, ``linear [in, out]``, ``relu``, ``flatten``,
    ``maxpool k``, ``dropout p`` and ``residual {"body": [...], "shortcut": [...]}`` (empty shortcut
    = identity; keys ``"<i>.body.<j>.weight"``). Malformed entries raise ``ManifestError`` naming
    the position, e.g. ``layers[2].residual.body[0]``.
    """
    return _build(layers, "layers")


def with_normalization(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """``net`` with ``Normalize(mean, std)`` in front, keeping ``net``'s state_dict keys.

    For an ``nn.Sequential`` ``net`` the result is one flat ``nn.Sequential`` whose first child is
    named ``"normalize"`` and whose other children keep their names (``"0"``, ``"1"``, ...), sharing
    ``net``'s modules; any other ``net`` becomes the child ``"net"`` (keys gain a ``"net."`` prefix).
    """
    norm = Normalize(mean, std)
    if isinstance(net, nn.Sequential):
        return nn.Sequential(OrderedDict([("normalize", norm), *net.named_children()]))
    return nn.Sequential(OrderedDict([("normalize", norm), ("net", net)]))


def _describe(layers: list) -> str:
    parts = []
    for entry in layers:
        (kind, args), = entry.items()
        if kind == "residual":
            parts.append(f"residual({_describe(args['body'])})")
        else:
            parts.append(kind)
    return "-".join(parts)


def _check_numbers(value: Any, where: str, key: str, *, count: int | None, ints: bool) -> None:
    ok_type = (lambda v: isinstance(v, int)) if ints else (lambda v: isinstance(v, (int, float)))
    if (not isinstance(value, list) or not value or not all(ok_type(v) and not isinstance(v, bool) for v in value)
            or (count is not None and len(value) != count)):
        n = f"{count} " if count is not None else ""
        kind = "integers" if ints else "numbers"
        raise ManifestError(f"{where}: {key!r} must be a list of {n}{kind}, got {value!r}")


class ZooSource:
    """Models listed in a zoo manifest (``zoo.json``): list them, read their entries, load them.

    ``manifest_path`` is the JSON file, or a folder holding ``zoo.json``. Checkpoint paths in the
    manifest are relative to the manifest's folder. Loading builds the network from its layer
    list, loads the checkpoint with ``torch.load(weights_only=True)`` (strict: every key and shape
    must match), puts ``Normalize(mean, std)`` in front and returns a ``LoadedModel`` in eval mode.
    """

    def __init__(self, manifest_path: str | Path):
        path = Path(manifest_path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no zoo manifest there; pass the manifest JSON file or its folder")
        self.path = path.resolve()
        self.root = self.path.parent
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"{self.path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{self.path}: not a UTF-8 text file, so not a JSON manifest ({exc})") from exc
        if not isinstance(data, dict) or not data:
            raise ManifestError(
                f"{self.path}: a zoo manifest is a non-empty JSON object mapping model names to entries, "
                f"got {type(data).__name__}{' (empty)' if not data else ''}"
            )
        for name, entry in data.items():
            self._validate(name, entry)
        self._entries: dict[str, dict[str, Any]] = data

    def _validate(self, name: str, entry: Any) -> None:
        where = f"{self.path}: model {name!r}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected an object with keys {', '.join(REQUIRED_KEYS)}, got {type(entry).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ManifestError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                                f"every entry needs {', '.join(REQUIRED_KEYS)}")
        for key in ("file", "dataset"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise ManifestError(f"{where}: {key!r} must be a non-empty string, got {entry[key]!r}")
        _check_numbers(entry["input"], where, "input", count=3, ints=True)
        if any(v < 1 for v in entry["input"]):
            raise ManifestError(f"{where}: 'input' sizes must be positive, got {entry['input']!r}")
        channels = entry["input"][0]
        _check_numbers(entry["mean"], where, "mean", count=channels, ints=False)
        _check_numbers(entry["std"], where, "std", count=channels, ints=False)
        if any(v <= 0 for v in entry["std"]):
            raise ManifestError(f"{where}: 'std' must be positive, got {entry['std']!r}")
        if not isinstance(entry["layers"], list) or not entry["layers"]:
            raise ManifestError(f"{where}: 'layers' must be a non-empty list of layers")
        tm = entry.get("threat_model")
        if tm is not None and not isinstance(tm, str):
            raise ManifestError(f"{where}: 'threat_model' must be a string or null, got {tm!r}")

    # -- queries -----------------------------------------------------------
    def names(self, dataset: str | None = None) -> list[str]:
        """Model names in manifest order; only those trained on ``dataset`` when given."""
        if dataset is None:
            return list(self._entries)
        known = self.datasets()
        if dataset not in known:
            close = difflib.get_close_matches(dataset, known, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"dataset: no model in {self.path} is trained on {dataset!r}.{hint} "
                             f"Datasets there: {', '.join(known)}")
        return [n for n, e in self._entries.items() if e["dataset"] == dataset]

    def datasets(self) -> list[str]:
        """The datasets the manifest's models were trained on, sorted."""
        return sorted({e["dataset"] for e in self._entries.values()})

    def entry(self, name: str) -> dict[str, Any]:
        """A copy of the manifest entry for ``name``."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise UnknownModelError(
                f"unknown model {name!r} in the zoo manifest {self.path}.{hint} "
                f"Call .names() for all {len(self._entries)} models."
            )
        return copy.deepcopy(self._entries[name])

    def checkpoint_path(self, name: str) -> Path:
        """Where the checkpoint of ``name`` lives (``file`` resolved against the manifest's folder)."""
        return self.root / self.entry(name)["file"]

    def check(self, name: str) -> None:
        """Raise, naming the file and the manifest, when model ``name``'s checkpoint is not on disk."""
        file = self.checkpoint_path(name)
        if not file.is_file():
            raise FileNotFoundError(
                f"checkpoint of model {name!r} not found: {file} (listed as {self.entry(name)['file']!r} "
                f"in {self.path}, relative to its folder)"
            )

    def fingerprint(self, name: str) -> str:
        """The content of model ``name``: the SHA-256 of its checkpoint file (cached by path, size and
        mtime) together with what turns it into a model (layers, input shape, mean, std)."""
        entry = self.entry(name)
        file = self.checkpoint_path(name)
        self.check(name)
        from .fingerprint import combine, file_sha256

        return combine(checkpoint=file_sha256(file), layers=entry["layers"], input=entry["input"],
                       mean=entry["mean"], std=entry["std"])

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self.names())

    def __repr__(self) -> str:
        return f"ZooSource({str(self.path)!r}, models={len(self)})"

    # -- loading -----------------------------------------------------------
    def build(self, name: str) -> nn.Sequential:
        """The bare network of ``name`` (no normalisation, fresh weights)."""
        entry = self.entry(name)
        try:
            return build_network(entry["layers"])
        except ManifestError as exc:
            raise ManifestError(f"{self.path}: model {name!r}: {exc}") from exc

    def load_network(self, name: str) -> nn.Sequential:
        """The bare network of ``name`` with its checkpoint loaded (expects normalised inputs)."""
        net = self.build(name)
        file = self.checkpoint_path(name)
        self.check(name)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
            raise CheckpointError(
                f"model {name!r}: cannot read the checkpoint {file} ({type(exc).__name__}: {first}); it should be "
                "a state_dict of tensors saved with torch.save: the file is corrupt or incomplete, or holds other "
                "Python objects (checkpoints are loaded with weights_only=True, for safety)"
            ) from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(
                f"model {name!r}: the checkpoint {file} holds a {type(state).__name__}, not a state_dict "
                "(a dict of parameter name -> tensor)"
            )
        expected = net.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [f"{k}: checkpoint {list(state[k].shape)} vs network {list(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or shapes:
            problems = []
            if missing:
                problems.append(f"missing keys {missing}")
            if unexpected:
                problems.append(f"unexpected keys {unexpected}")
            if shapes:
                problems.append("shape mismatches " + "; ".join(shapes))
            raise CheckpointError(
                f"model {name!r}: the checkpoint {file} does not fit the layer list in {self.path}: "
                + ", ".join(problems)
            )
        net.load_state_dict(state, strict=True)
        return net

    def load(self, name: str, device: str | torch.device | None = "cpu") -> LoadedModel:
        """Load ``name`` as a ``LoadedModel`` whose module takes [0, 1] images, in eval mode on ``device``.

        ``device=None`` picks CUDA when available, else the CPU.
        """
        entry = self.entry(name)
        net = self.load_network(name)
        model = with_normalization(net, entry["mean"], entry["std"])
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model.to(device).eval()
        extras = {k: v for k, v in entry.items() if k not in REQUIRED_KEYS and k != "threat_model"}
        metadata = {
            **extras,
            "architecture": _describe(entry["layers"]),
            "layers": entry["layers"],
            "input_shape": list(entry["input"]),
            "mean": list(entry["mean"]),
            "std": list(entry["std"]),
            "training": entry.get("training"),
            "source": entry.get("source"),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "checkpoint": str(self.checkpoint_path(name)),
            "manifest": str(self.path),
        }
        return LoadedModel(name=name, module=model, dataset=entry["dataset"],
                           threat_model=entry.get("threat_model"), metadata=metadata)
