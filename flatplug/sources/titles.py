"""Datasets by the names people use: "CIFAR-10 test set", not ``imagefolder[test.tar.gz]``."""

from __future__ import annotations

from pathlib import PurePath
from typing import Sequence

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: registered dataset name -> the data set's usual name
KNOWN = {"digits": "digits (scikit-learn)", "mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
         "imagenet": "ImageNet"}
_SPLITS = {"test": "test set", "t10k": "test set", "val": "validation set", "valid": "validation set",
           "validation": "validation set", "train": "training set", "all": "(all splits)"}


def split_words(split: str | None) -> str:
    """``"test"`` -> ``"test set"``, ``"train"`` -> ``"training set"``; other names as they are."""
    if not split:
        return ""
    return _SPLITS.get(split.lower(), f"{split} split")


def split_of_path(path: str | None) -> str | None:
    """The split a file or folder name announces (``test.tar.gz`` -> ``test``), else None."""
    if not path:
        return None
    stem = PurePath(path).name.lower()
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem if stem in _SPLITS else None


def imagefolder_title(classes: Sequence[str], split: str | None, path: str | None) -> str:
    """CIFAR-10 when the class folders are CIFAR-10's ten classes, else the folder or archive name."""
    if tuple(classes) == CIFAR10_CLASSES:
        base = "CIFAR-10"
    else:
        base = f"images from {PurePath(path).name}" if path else "images"
    words = split_words(split or split_of_path(path))
    return f"{base} {words}".strip()


def title(dataset: str, split: str | None = None) -> str:
    """A registered dataset's usual name and split, e.g. ``title("mnist", "test")`` -> ``"MNIST test set"``."""
    base = KNOWN.get(dataset, dataset)
    words = split_words(split)
    return f"{base} {words}".strip()
