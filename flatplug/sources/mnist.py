"""MNIST-style IDX files (plain or gzipped), with the header checked against the data."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import IDXError
from .subset import LabeledImages, balanced_subset
from .titles import title

#: IDX type codes -> numpy dtype (big-endian, as the format stores them).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
PREFIXES = {"test": "t10k", "train": "train"}


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if not gzipped:
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXError(f"{path}: the gzip stream is corrupt or truncated ({exc}); download the file again") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of the shape its header declares.

    The header is validated: two zero bytes, a known type code, the number of dimensions, and a
    data length that matches the product of the dimensions exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IDXError(f"{path}: only {len(raw)} bytes, too short for an IDX header (4 bytes of magic number)")
    zero, code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in IDX_DTYPES or ndim == 0:
        raise IDXError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex()}; expected 0000 then a type code in "
            f"{sorted(hex(c) for c in IDX_DTYPES)} and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise IDXError(
            f"{path}: {what}: the header declares shape {list(dims)} of {dtype.name} ({expected} bytes of data), "
            f"but the file holds {got}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, prefix: str, kind: str, ndim: int) -> Path:
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"{folder}: no {kind} file for this split; expected {stems[0]} or {stems[0]}.gz "
        f"(found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})"
    )


def load_mnist(path: str | Path, n: int | None = None, seed: int = 0, split: str = "test") -> LabeledImages:
    """MNIST (or Fashion-MNIST, KMNIST: same IDX layout) from a folder of IDX files, as ``(x, y)``.

    ``path``: the folder holding ``t10k-images-idx3-ubyte(.gz)`` and ``t10k-labels-idx1-ubyte(.gz)``
    (``split="test"``) or the ``train-*`` pair (``split="train"``). ``x``: float32 ``[N, 1, 28, 28]``
    in [0, 1] (bytes / 255); ``y``: int64. ``n``: a deterministic class-balanced subset
    (see ``balanced_subset``), ``None`` for all images; only the chosen images are converted.
    """
    if split not in PREFIXES:
        raise ValueError(f"split: expected 'test' or 'train', got {split!r}")
    folder = Path(path)
    if not folder.is_dir():
        hint = "; pass the folder that holds it" if folder.is_file() else ""
        raise FileNotFoundError(f"{folder}: not a folder of MNIST IDX files{hint}")
    images_path = _find(folder, PREFIXES[split], "images", 3)
    labels_path = _find(folder, PREFIXES[split], "labels", 1)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXError(f"{images_path}: expected unsigned bytes of shape [N, H, W], got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXError(f"{labels_path}: expected unsigned bytes of shape [N], got {labels.dtype} {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise IDXError(
            f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} holds {labels.shape[0]} labels; "
            "the two files do not belong together"
        )
    y_all = torch.from_numpy(labels.astype(np.int64))
    pick = balanced_subset(y_all, n, seed)
    x = torch.from_numpy(images[pick.numpy()]).to(torch.float32).div_(255.0).unsqueeze(1)
    classes = [str(c) for c in range(int(y_all.max()) + 1)]
    return LabeledImages(x.contiguous(), y_all[pick].clone(), classes=classes, indices=pick,
                         source=f"{images_path} (split={split})", title=title("mnist", split))
