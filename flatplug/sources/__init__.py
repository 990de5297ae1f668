"""Built-in model sources and datasets.

Datasets return CPU tensors ``(x, y)``: float32 images in [0, 1] (NCHW) and int64 labels, as a
``LabeledImages`` pair that also carries the class names and the chosen indices; ``n`` picks a
deterministic class-balanced subset. The zoo source loads models from a JSON manifest.
"""

from __future__ import annotations

from .digits import load_digits
from .imagefolder import load_imagefolder
from .mnist import IDXError, load_mnist, read_idx
from .subset import LabeledImages, balanced_subset, to_loader
from .zoo import (CheckpointError, ManifestError, Normalize, Residual, UnknownModelError, ZooSource,
                  build_network, with_normalization)

#: name -> loader, for the ``flatplug_register_datasets`` hook.
DATASETS = {"digits": load_digits, "mnist": load_mnist, "imagefolder": load_imagefolder}
#: name -> source factory, for the ``flatplug_register_sources`` hook (``ZooSource(manifest_path)``).
SOURCES = {"zoo": ZooSource}

__all__ = [
    "DATASETS", "SOURCES", "CheckpointError", "IDXError", "LabeledImages", "ManifestError", "Normalize",
    "Residual", "UnknownModelError", "ZooSource", "balanced_subset", "build_network", "load_digits",
    "load_imagefolder", "load_mnist", "read_idx", "to_loader", "with_normalization",
]
