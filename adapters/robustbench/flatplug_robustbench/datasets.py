"""CIFAR-10, CIFAR-100 and RobustBench's 5,000-image ImageNet test set, through ``robustbench.data``.

Each loader takes RobustBench's ``data_dir`` as ``path`` (default ``"./data"``, as in RobustBench)
and returns a deterministic class-balanced subset of ``n`` images (``flatplug.sources.balanced_subset``)
as a ``LabeledImages`` pair: float32 ``[N, 3, H, W]`` in [0, 1] and int64 labels.

CIFAR: the torchvision files (``cifar-10-batches-py/`` or the ``cifar-10-python.tar.gz`` archive,
likewise for CIFAR-100) in ``data_dir``; when they are absent, torchvision downloads them only if
``allow_download`` is true and the host answers within ``probe_timeout`` seconds, else a
``DatasetNotFoundError`` says what to put where. ImageNet cannot be downloaded: RobustBench reads
the ILSVRC2012 validation images from ``<data_dir>/val/<wnid>/<file>.JPEG``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from flatplug.sources import LabeledImages, balanced_subset

from ._compat import import_robustbench
from ._net import bool_option, positive_float_option, reachable

DEFAULT_DATA_DIR = "./data"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not in ``data_dir`` and cannot be downloaded now."""


def _data_dir(path: str | os.PathLike | None) -> Path:
    return Path(path) if path not in (None, "") else Path(DEFAULT_DATA_DIR)


def _cifar(which: str, path: str | os.PathLike | None, n: int | None, seed: int,
           allow_download: bool | str, probe_timeout: float | str) -> LabeledImages:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    allow = bool_option(allow_download, "allow_download")
    timeout = positive_float_option(probe_timeout, "probe_timeout")
    rb = import_robustbench()
    cls, rb_loader, label = {
        "cifar10": (tvd.CIFAR10, rb.data.load_cifar10, "CIFAR-10"),
        "cifar100": (tvd.CIFAR100, rb.data.load_cifar100, "CIFAR-100"),
    }[which]
    root = _data_dir(path)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"path: {root} is a file; pass the data folder (RobustBench's data_dir) that holds "
                                 f"{cls.base_folder}/ or {cls.filename}")
    try:
        classes = list(cls(root=str(root), train=False, download=False).classes)  # integrity checked here
    except RuntimeError:
        classes = None
    if classes is None and not check_integrity(str(root / cls.filename), cls.tgz_md5):
        host = urlparse(cls.url).hostname or cls.url
        todo = (f"put the {label} python files in {root} (the folder {cls.base_folder}/ as torchvision extracts it, "
                f"or the archive {cls.filename} from {cls.url})")
        if not allow:
            raise DatasetNotFoundError(f"{label}: not found (or corrupt) in {root} and downloads are off "
                                       f"(allow_download=False); {todo}")
        if not reachable(host, timeout=timeout):
            raise DatasetNotFoundError(f"{label}: not found (or corrupt) in {root} and {host} cannot be reached "
                                       f"within {timeout:g} s (no network?); {todo}")
    x_all, y_all = rb_loader(n_examples=None, data_dir=str(root))
    if classes is None:
        classes = list(cls(root=str(root), train=False, download=False).classes)
    pick = balanced_subset(y_all, n, seed)
    return LabeledImages(x_all[pick].contiguous(), y_all[pick].to(torch.long).clone(), classes=classes,
                         indices=pick, source=f"{root} ({label} test split via robustbench.data.load_{which})")


def load_cifar10(path: str | os.PathLike | None = None, n: int | None = None, seed: int = 0, *,
                 allow_download: bool | str = True, probe_timeout: float | str = 3.0) -> LabeledImages:
    """The CIFAR-10 test set (10,000 images, 32x32) via ``robustbench.data.load_cifar10``; ``n``: a class-balanced subset."""
    return _cifar("cifar10", path, n, seed, allow_download, probe_timeout)


def load_cifar100(path: str | os.PathLike | None = None, n: int | None = None, seed: int = 0, *,
                  allow_download: bool | str = True, probe_timeout: float | str = 3.0) -> LabeledImages:
    """The CIFAR-100 test set (10,000 images, 32x32) via ``robustbench.data.load_cifar100``; ``n``: a class-balanced subset."""
    return _cifar("cifar100", path, n, seed, allow_download, probe_timeout)


def _imagenet_listing() -> tuple[list[str], list[str]]:
    """RobustBench's 5,000 test image paths (``<wnid>/<file>``) and the 1,000 wnids in label order."""
    files = resources.files("robustbench").joinpath("helper_files")
    ids = [line.strip() for line in files.joinpath("imagenet_test_image_ids.txt").read_text().splitlines() if line.strip()]
    mapping: dict[str, int] = json.loads(files.joinpath("imagenet_class_to_id_map.json").read_text())
    wnids = sorted(mapping, key=mapping.__getitem__)
    return ids, wnids


def load_imagenet(path: str | os.PathLike | None = None, n: int | None = None, seed: int = 0, *,
                  preprocessing: str | None = None, model_name: str | None = None,
                  threat_model: str = "Linf") -> LabeledImages:
    """RobustBench's 5,000 ImageNet validation images (``robustbench.loaders.CustomImageFolder``).

    ``path``: the folder holding ``val/<wnid>/<file>.JPEG`` (all 1,000 class folders). The images
    are resized as the model expects: ``preprocessing`` names one of ``robustbench.data.PREPROCESSINGS``
    (default ``"Res256Crop224"``), or ``model_name`` (with ``threat_model``) takes the preprocessing
    RobustBench uses for that ImageNet model. Only the chosen ``n`` images are decoded.
    """
    rb = import_robustbench()
    from robustbench.loaders import CustomImageFolder
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    if preprocessing is not None and model_name is not None:
        raise ValueError("preprocessing, model_name: pass one of them (model_name picks that model's preprocessing)")
    if model_name is not None:
        try:
            tm = ThreatModel(threat_model)
        except ValueError:
            raise ValueError(f"threat_model: expected Linf or corruptions for ImageNet, got {threat_model!r}") from None
        try:
            transform = rb.data.get_preprocessing(BenchmarkDataset.imagenet, tm, model_name, None)
        except KeyError:
            raise ValueError(f"model_name: {model_name!r} is not a RobustBench imagenet/{tm.value} model") from None
        how = f"the preprocessing of {model_name}"
    else:
        key = "Res256Crop224" if preprocessing is None else preprocessing
        names = [k for k in rb.data.PREPROCESSINGS if k is not None]
        if key not in names:
            raise ValueError(f"preprocessing: expected one of {', '.join(names)}, got {preprocessing!r}")
        transform = rb.data.PREPROCESSINGS[key]
        how = key

    root = _data_dir(path)
    val = root / "val"
    ids, wnids = _imagenet_listing()
    todo = (f"put the ILSVRC2012 validation images in {val}/<wnid>/<file>.JPEG (all 1,000 class folders; "
            "RobustBench uses 5,000 of them). ImageNet cannot be downloaded automatically")
    if not val.is_dir():
        raise DatasetNotFoundError(f"ImageNet: no folder {val}; {todo}")
    folders = sorted(d.name for d in os.scandir(val) if d.is_dir())
    if folders != sorted(wnids):
        lacking = sorted(set(wnids) - set(folders))
        extra = sorted(set(folders) - set(wnids))
        parts = []
        if lacking:
            parts.append(f"{len(lacking)} class folders missing (e.g. {', '.join(lacking[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected folders (e.g. {', '.join(extra[:3])})")
        raise DatasetNotFoundError(f"ImageNet: {val} does not hold exactly the 1,000 ImageNet class folders "
                                   f"({'; '.join(parts)}), so labels would be wrong; {todo}")
    absent = [f for f in ids if not (val / f).is_file()]
    if absent:
        raise DatasetNotFoundError(f"ImageNet: {len(absent)} of RobustBench's {len(ids)} test images are missing "
                                   f"from {val} (e.g. {absent[0]}); {todo}")
    dataset = CustomImageFolder(str(val), transform)
    labels = torch.as_tensor(dataset.targets, dtype=torch.long)
    pick = balanced_subset(labels, n, seed)
    images = [dataset[i][0] for i in pick.tolist()]
    x = torch.stack(images).to(torch.float32).contiguous()
    return LabeledImages(x, labels[pick].clone(), classes=list(dataset.classes), indices=pick,
                         source=f"{val} (RobustBench ImageNet test set, {how})")


#: name -> loader, for the ``flatplug_register_datasets`` hook.
DATASETS: dict[str, Any] = {"cifar10": load_cifar10, "cifar100": load_cifar100, "imagenet": load_imagenet}
