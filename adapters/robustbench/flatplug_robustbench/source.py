"""The ``robustbench`` model source: every RobustBench model-zoo entry, loaded by ``robustbench.utils.load_model``.

Checkpoints live where RobustBench puts them: ``<model_dir>/<dataset>/<threat_model>/<Name>.pt``
(ensembles: ``<Name>.pt_m0.pt``, ``<Name>.pt_m1.pt``, ...); a few entries are fetched by timm or
torchvision from a URL into torch's hub cache (``torch.hub.get_dir()/checkpoints``). When every
file a model needs is there, loading is offline. When one is missing, the source downloads it
through RobustBench only if ``allow_download`` is true and the download host answers within
``probe_timeout`` seconds; otherwise it raises :class:`CheckpointNotFoundError` naming the model,
the file(s) to provide and where they come from, without hanging on a dead network.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import torch

from flatplug.errors import CheckpointDownloadError, CheckpointError, CheckpointNotFoundError, UnknownModelError
from flatplug.types import LoadedModel

from . import leaderboard
from ._compat import import_robustbench
from ._net import bool_option, positive_float_option, reachable

DATASETS = ("cifar10", "cifar100", "imagenet")
THREAT_MODELS = ("Linf", "L2", "corruptions")
#: where RobustBench's Google Drive checkpoints come from (probed before a download is tried)
GDRIVE_HOST = "docs.google.com"  # robustbench.utils.download_gdrive fetches from docs.google.com/uc
#: input sizes of RobustBench's ImageNet preprocessings (robustbench.data.PREPROCESSINGS)
PREPROCESSING_SIZES = {"Res256Crop224": 224, "Crop288": 288, "Res224": 224, "BicubicRes256Crop224": 224}
INPUT_SHAPES = {"cifar10": [3, 32, 32], "cifar100": [3, 32, 32]}


@dataclass(frozen=True)
class Weights:
    """Where a model's weights live: the local ``files`` an offline load needs, and their origin."""

    files: tuple[Path, ...]
    host: str
    origin: str
    place: str = "RobustBench's layout under model_dir"


def _choice(value: Any, options: tuple[str, ...], name: str) -> str:
    if isinstance(value, str):
        if value in options:
            return value
        folded = {o.lower(): o for o in options}
        if value.lower() in folded:
            return folded[value.lower()]
    raise ValueError(f"{name}: expected one of {', '.join(options)}, got {value!r}")


@contextlib.contextmanager
def _torch_load_trusting(trust: bool) -> Iterator[None]:
    """While active, ``torch.load`` calls that do not pass ``weights_only`` unpickle fully (``trust``)."""
    if not trust:
        yield
        return
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


class RobustBenchSource:
    """RobustBench's model zoo for one dataset and threat model, as a flatplug model source.

    Options (all plain values, so a worker can rebuild the source):

    - ``model_dir``: RobustBench's checkpoint folder (default ``"./models"``, as in RobustBench).
    - ``dataset``: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``; ``threat_model``: ``"Linf"``,
      ``"L2"`` or ``"corruptions"`` (the combinations RobustBench has).
    - ``model_info``: a RobustBench ``model_info`` folder for the leaderboard metadata; without
      it, the snapshot shipped with this adapter is used.
    - ``allow_download``: fetch missing checkpoints through RobustBench (default true); the host is
      probed first for ``probe_timeout`` seconds (default 3) so a missing network fails fast.
    - ``trust_checkpoints``: let ``torch.load`` unpickle arbitrary objects in the checkpoints
      (default false: ``weights_only`` loading, which some old RobustBench checkpoints need relaxed).
    """

    def __init__(self, model_dir: str | os.PathLike = "./models", dataset: str = "cifar10",
                 threat_model: str = "Linf", model_info: str | os.PathLike | None = None,
                 allow_download: bool | str = True, probe_timeout: float | str = 3.0,
                 trust_checkpoints: bool | str = False):
        self.dataset = _choice(dataset, DATASETS, "dataset")
        self.threat_model = _choice(threat_model, THREAT_MODELS, "threat_model")
        if model_dir is None or str(model_dir) == "":
            raise ValueError("model_dir: expected a folder for RobustBench checkpoints, got nothing")
        self.model_dir = Path(model_dir)
        self.model_info = Path(model_info) if model_info not in (None, "") else None
        if self.model_info is not None and not self.model_info.is_dir():
            raise FileNotFoundError(f"model_info: {self.model_info} is not a folder; pass the 'model_info' "
                                    "folder of a RobustBench checkout, or leave it out to use the shipped snapshot")
        self.allow_download = bool_option(allow_download, "allow_download")
        self.probe_timeout = positive_float_option(probe_timeout, "probe_timeout")
        self.trust_checkpoints = bool_option(trust_checkpoints, "trust_checkpoints")
        self._reachable: dict[str, bool] = {}  # download hosts probed by this source
        self._zoo()  # fails now, naming the combinations, when RobustBench has no such zoo

    # -- the zoo ------------------------------------------------------------
    def _zoo(self, dataset: str | None = None, threat_model: str | None = None) -> dict[str, dict[str, Any]]:
        import_robustbench()
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

        ds = BenchmarkDataset(dataset or self.dataset)
        tm = ThreatModel(threat_model or self.threat_model)
        if tm not in model_dicts.get(ds, {}):
            have = [f"{d.value}/{t.value}" for d, ts in model_dicts.items() for t in ts]
            raise ValueError(f"RobustBench has no {ds.value}/{tm.value} model zoo; "
                             f"it has {', '.join(have)} (set dataset= and threat_model=)")
        return model_dicts[ds][tm]

    def names(self, dataset: str | None = None) -> list[str]:
        """Every RobustBench zoo entry for this source's dataset and threat model, in RobustBench's order.

        ``dataset``, when given, must be this source's dataset (a source serves one dataset; make
        another source with ``dataset=`` for the others).
        """
        if dataset is not None and dataset != self.dataset:
            _choice(dataset, DATASETS, "dataset")
            raise ValueError(f"dataset: this robustbench source serves {self.dataset}/{self.threat_model}; "
                             f"for {dataset} models create it with dataset={dataset!r} "
                             f"(CLI: --source-option dataset={dataset})")
        return list(self._zoo())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._zoo()

    def __repr__(self) -> str:
        return (f"RobustBenchSource(dataset={self.dataset!r}, threat_model={self.threat_model!r}, "
                f"model_dir={str(self.model_dir)!r})")

    def entry(self, name: str) -> dict[str, Any]:
        """RobustBench's zoo entry for ``name`` (constructor, ``gdrive_id``, ...); unknown names list the closest."""
        zoo = self._zoo()
        if isinstance(name, str) and name in zoo:
            return zoo[name]
        raise UnknownModelError(self._unknown_message(name, zoo))

    def _unknown_message(self, name: Any, zoo: dict[str, Any]) -> str:
        where = f"{self.dataset}/{self.threat_model}"
        text = f"unknown RobustBench model {name!r} for {where}."
        close = difflib.get_close_matches(str(name), list(zoo), n=3, cutoff=0.6)
        if close:
            text += f" Did you mean {' or '.join(map(repr, close))}?"
        if isinstance(name, str):
            from robustbench.model_zoo import model_dicts

            elsewhere = [f"{d.value}/{t.value}" for d, ts in model_dicts.items() for t, models in ts.items()
                         if name in models and f"{d.value}/{t.value}" != where]
            if elsewhere:
                text += (f" {name!r} is in the {', '.join(elsewhere)} zoo: create the source with the matching "
                         "dataset= and threat_model=.")
            elif leaderboard.lookup(self.dataset, self.threat_model, name, self.model_info)[0] is not None:
                text += f" {name!r} is on the {where} leaderboard, but RobustBench publishes no weights for it."
        return text + f" Call .names() for all {len(zoo)} {where} models."

    # -- where the weights are ---------------------------------------------
    def _timm_name(self, name: str) -> str:
        return f"{name.lower().replace('-', '_')}_{self.dataset}_{self.threat_model.lower()}"

    def weights(self, name: str) -> Weights:
        """The files ``name`` needs on disk for an offline load, and where a download would get them."""
        entry = self.entry(name)
        import timm

        hub = Path(torch.hub.get_dir()) / "checkpoints"
        timm_name = self._timm_name(name)
        if timm.is_model(timm_name):  # robustbench.utils.load_model builds these with timm (pretrained=True)
            cfg = timm.models.get_pretrained_cfg(timm_name)
            url = getattr(cfg, "url", None) if cfg is not None else None
            hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
            if url:
                return Weights((hub / Path(urlparse(url).path).name,), urlparse(url).hostname or url,
                               f"timm, from {url}", "torch's hub cache, where timm looks")
            return Weights((), "huggingface.co", f"timm, from the Hugging Face Hub ({hub_id or timm_name})",
                           "the Hugging Face cache")
        gdrive = entry.get("gdrive_id")
        folder = self.model_dir / self.dataset / self.threat_model
        if gdrive is None:
            raise UnknownModelError(f"RobustBench model {name!r} ({self.dataset}/{self.threat_model}) has no "
                                    "published weights (no gdrive_id and not a timm model)")
        if isinstance(gdrive, (list, tuple)):
            files = tuple(folder / f"{name}.pt_m{i}.pt" for i in range(len(gdrive)))
            return Weights(files, GDRIVE_HOST, "Google Drive ids " + ", ".join(map(str, gdrive)))
        if self.dataset == "imagenet" and "Standard" in name:  # built with torchvision's pretrained weights
            url = _torchvision_url(name)
            return Weights((hub / Path(urlparse(url).path).name,), urlparse(url).hostname or url,
                           f"torchvision, from {url}", "torch's hub cache, where torchvision looks")
        return Weights((folder / f"{name}.pt",), GDRIVE_HOST, f"Google Drive id {gdrive}")

    def checkpoint_paths(self, name: str) -> list[Path]:
        """The checkpoint file(s) of ``name`` (see :meth:`weights`)."""
        return list(self.weights(name).files)

    def check(self, name: str) -> None:
        """Raise :class:`CheckpointNotFoundError` (what to put where) when ``name``'s weights are not on
        disk and cannot be downloaded now (``allow_download`` off, or the host does not answer within
        ``probe_timeout``; each host is probed once per source). Loads nothing."""
        where = self.weights(name)
        missing = [p for p in where.files if not p.is_file()]
        if missing or not where.files:
            self._check_download(name, where, missing)

    def fingerprint(self, name: str) -> str | None:
        """The content of ``name`` without loading it, for scoring's store keys.

        The SHA-256 of each checkpoint file (cached by path, size and times) together with what turns
        the files into a module: RobustBench's entry name, dataset, threat model and RobustBench's
        version (its constructors build the architecture). None when a file is not on disk yet or the
        weights live only in the Hugging Face cache: scoring then loads the model (downloading it
        when allowed) and hashes its parameters instead.
        """
        files = self.weights(name).files
        if not files or not all(p.is_file() for p in files):
            return None
        from flatplug.sources.fingerprint import files_fingerprint

        rb = import_robustbench()
        return files_fingerprint(files, source="robustbench", name=name, dataset=self.dataset,
                                 threat_model=self.threat_model,
                                 robustbench=getattr(rb, "__version__", None) or _dist_version("robustbench"))

    # -- metadata ---------------------------------------------------------------
    def metadata(self, name: str) -> dict[str, Any]:
        """Leaderboard metadata of ``name`` (``model_info`` folder when given, else the shipped snapshot)."""
        record, where = leaderboard.lookup(self.dataset, self.threat_model, name, self.model_info)
        return leaderboard.metadata_from_record(record, self.threat_model, where)

    def _input(self, name: str, entry: dict[str, Any]) -> tuple[list[int] | None, str | None]:
        if self.dataset in INPUT_SHAPES:
            return list(INPUT_SHAPES[self.dataset]), None
        import timm

        timm_name = self._timm_name(name)
        if timm.is_model(timm_name):
            cfg = timm.models.get_pretrained_cfg(timm_name)
            size = list(getattr(cfg, "input_size", ()) or ()) if cfg is not None else []
            return (size or None), f"timm:{timm_name}"
        prepr = entry.get("preprocessing", "Res256Crop224")
        side = PREPROCESSING_SIZES.get(prepr) if isinstance(prepr, str) else None
        return ([3, side, side] if side else None), (prepr if isinstance(prepr, str) else None)

    # -- loading ------------------------------------------------------------------
    def load(self, name: str, device: str | torch.device | None = "cpu") -> LoadedModel:
        """``name`` as a :class:`LoadedModel`: RobustBench's module (it takes [0, 1] images and
        normalises inside), in eval mode on ``device`` (``None``: CUDA when available).

        Raises ``UnknownModelError`` (closest names listed), ``CheckpointNotFoundError`` (weights
        absent and no download possible: names the file(s) to provide), ``CheckpointDownloadError``
        or ``CheckpointError`` (a file that cannot be loaded).
        """
        entry = self.entry(name)
        where = self.weights(name)
        missing = [p for p in where.files if not p.is_file()]
        if missing or not where.files:
            self._check_download(name, where, missing)
        rb = import_robustbench()
        try:
            with _torch_load_trusting(self.trust_checkpoints):
                module = rb.utils.load_model(model_name=name, model_dir=str(self.model_dir),
                                             dataset=self.dataset, threat_model=self.threat_model)
        except Exception as exc:
            raise self._load_error(name, where, missing, exc) from exc
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        module = module.to(device).eval()
        input_shape, preprocessing = self._input(name, entry)
        meta = self.metadata(name)
        if not meta.get("architecture"):
            meta["architecture"] = type(module).__name__
        import robustbench

        meta.update({
            "source": "robustbench",
            "robustbench_name": name,
            "dataset": self.dataset,
            "threat_model": self.threat_model,
            "input_shape": input_shape,
            "preprocessing": preprocessing,
            "checkpoint": [str(p) for p in where.files],
            "weights_origin": where.origin,
            "model_dir": str(self.model_dir),
            "num_parameters": sum(p.numel() for p in module.parameters()),
            "robustbench_version": getattr(robustbench, "__version__", None) or _dist_version("robustbench"),
        })
        return LoadedModel(name=name, module=module, dataset=self.dataset, threat_model=self.threat_model,
                           metadata=meta)

    def _check_download(self, name: str, where: Weights, missing: list[Path]) -> None:
        files = ", ".join(str(p) for p in missing) or where.place
        what = f"RobustBench model {name!r} ({self.dataset}/{self.threat_model})"
        place = where.place + (f"={str(self.model_dir)!r}" if where.place.endswith("model_dir") else "")
        todo = f"put its checkpoint at {files} ({place}; weights from {where.origin})"
        if not self.allow_download:
            raise CheckpointNotFoundError(f"{what}: the weights are not on disk and downloads are off "
                                          f"(allow_download=False); {todo}, or allow downloads")
        if where.host not in self._reachable:
            self._reachable[where.host] = reachable(where.host, timeout=self.probe_timeout)
        if not self._reachable[where.host]:
            raise CheckpointNotFoundError(f"{what}: the weights are not on disk and {where.host} cannot be reached "
                                          f"within {self.probe_timeout:g} s (no network?); {todo}")

    def _load_error(self, name: str, where: Weights, missing: list[Path], exc: Exception) -> Exception:
        what = f"RobustBench model {name!r} ({self.dataset}/{self.threat_model})"
        files = ", ".join(str(p) for p in where.files)
        message = _brief(exc)
        if "Unsupported global" in str(exc):
            return CheckpointError(
                f"{what}: {files} holds Python objects besides tensors, which torch.load(weights_only=True) "
                f"refuses ({message}). If you trust the file, pass trust_checkpoints=True "
                "(unpickling can run code)")
        if missing:
            return CheckpointDownloadError(
                f"{what}: downloading from {where.origin} into {', '.join(map(str, missing))} failed "
                f"({type(exc).__name__}: {message}); download it by hand and put it there "
                "(delete any partial file first)")
        return CheckpointError(f"{what}: cannot load {files} ({type(exc).__name__}: {message}); the file may be "
                               "corrupt or belong to another model; delete it to download it again")


def _brief(exc: Exception, limit: int = 300) -> str:
    """The informative line of an error (torch's weights-only errors put it after 'WeightsUnpickler error:')."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
    line = lines[0] + (" " + lines[1] if lines[0].endswith(":") and len(lines) > 1 else "")
    return line if len(line) <= limit else line[:limit] + "..."


def _torchvision_url(name: str) -> str:
    from torchvision.models import ResNet50_Weights

    known = {"Standard_R50": ResNet50_Weights.IMAGENET1K_V1.url}
    return known.get(name, "https://download.pytorch.org/models/")


def _dist_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
