"""Images in the ImageFolder layout, from a folder or a .tar/.tar.gz, decoding only what is chosen."""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .subset import LabeledImages, balanced_subset
from .titles import imagefolder_title

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _member_name(name: str) -> str:
    """An archive member's name without leading ``./`` or ``/``."""
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _is_image(rel: PurePosixPath) -> bool:
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)
    return not hidden and rel.suffix.lower() in IMAGE_EXTENSIONS


@functools.lru_cache(maxsize=8)
def _tar_listing(path: str, mtime_ns: int, size: int, ctime_ns: int = 0, inode: int = 0
                 ) -> tuple[tuple[str, tarfile.TarInfo], ...]:
    """(relative name, member) of every image in the archive; cached per file version (size, mtime,
    ctime and inode: an archive replaced by another of the same size and mtime is read again)."""
    try:
        with tarfile.open(path, "r:*") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read the archive ({type(exc).__name__}: {exc}); is it a complete .tar/.tar.gz?") from exc
    out = []
    for m in members:
        rel = PurePosixPath(_member_name(m.name))
        if m.isreg() and _is_image(rel):
            out.append((rel.as_posix(), m))
    return tuple(out)


def _folder_listing(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            rel = PurePosixPath(Path(dirpath, fn).relative_to(root).as_posix())
            if _is_image(rel):
                out.append(rel.as_posix())
    return out


def _choose_root(names: list[str], split: str | None, source: Path) -> tuple[str, list[str], list[str]]:
    """The folder whose sub-folders are the classes: returns (root, class names, image names under it)."""
    by_root: dict[str, list[str]] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) < 2:
            continue  # an image directly in the top folder belongs to no class
        by_root.setdefault("/".join(parts[:-2]), []).append(name)
    if not by_root:
        raise ValueError(
            f"{source}: no images in class folders; expected the ImageFolder layout <class>/<image> "
            "or <split>/<class>/<image>"
        )
    roots = sorted(by_root)
    if split is not None:
        matching = [r for r in roots if PurePosixPath(r).name == split]
        if not matching:
            raise ValueError(
                f"split: no folder named {split!r} holds class folders in {source}; "
                f"found: {', '.join(repr(r) for r in roots)}"
            )
        roots = matching
    if len(roots) > 1:
        raise ValueError(
            f"{source}: class folders sit under several folders ({', '.join(repr(r) for r in roots)}); "
            "pick one with split=<folder name>"
        )
    root = roots[0]
    images = sorted(by_root[root])
    classes = sorted({PurePosixPath(name).parts[-2] for name in images})
    return root, classes, images


def _decode(data: bytes, name: str, source: Path):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except Exception as exc:
        raise ValueError(f"{source}: cannot decode image {name!r} ({type(exc).__name__}: {exc})") from exc


def _to_tensor(images: list, names: list[str], source: Path) -> torch.Tensor:
    sizes = {img.size for img in images}
    if len(sizes) > 1:
        first = images[0].size
        odd = next(i for i, img in enumerate(images) if img.size != first)
        raise ValueError(
            f"{source}: images differ in size ({names[0]!r} is {first[0]}x{first[1]}, {names[odd]!r} is "
            f"{images[odd].size[0]}x{images[odd].size[1]}); resize them to one size first"
        )
    grey = all(img.mode in ("L", "1", "I;16", "I", "F") for img in images)
    mode = "L" if grey else "RGB"
    arrays = []
    for img in images:
        if img.mode in ("I;16", "I", "F"):
            raise ValueError(f"{source}: images of mode {img.mode!r} (16-bit or float) are not supported; save them as 8-bit")
        arrays.append(np.asarray(img.convert(mode), dtype=np.uint8))
    stacked = np.stack(arrays)  # [N, H, W] or [N, H, W, 3]
    x = torch.from_numpy(stacked).to(torch.float32).div_(255.0)
    return x.unsqueeze(1) if grey else x.permute(0, 3, 1, 2)


def load_imagefolder(path: str | Path, n: int | None = None, seed: int = 0, split: str | None = None) -> LabeledImages:
    """Images in the ImageFolder layout, from a folder or a ``.tar``/``.tar.gz``/``.tgz`` archive.

    The layout is ``<class>/<image>`` or ``<split>/<class>/<image>`` (any depth above the class
    folders); ``split`` names the folder holding the class folders when there are several (e.g.
    ``"train"``, ``"test"``). Class index = alphabetical order of the class folder names. ``n``: a
    deterministic class-balanced subset (see ``balanced_subset``), ``None`` for all images. Only the
    chosen images are read and decoded (PIL), so a small subset of a large archive is quick.
    Returns float32 ``x`` in [0, 1], ``[N, 3, H, W]`` (``[N, 1, H, W]`` when every chosen image is
    grey) and int64 ``y``. All chosen images must have the same size.
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or archive")
    is_tar = source.is_file()
    if is_tar:
        stat = source.stat()
        listing = dict(_tar_listing(str(source.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ctime_ns,
                                    stat.st_ino))
        names = list(listing)
    else:
        names = _folder_listing(source)
    if not names:
        raise ValueError(f"{source}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    root, classes, images = _choose_root(names, split, source)
    index = {c: i for i, c in enumerate(classes)}
    y_all = torch.tensor([index[PurePosixPath(name).parts[-2]] for name in images], dtype=torch.long)
    pick = balanced_subset(y_all, n, seed)
    chosen = [images[i] for i in pick.tolist()]

    decoded: dict[str, object] = {}
    if is_tar:
        # read the chosen members in archive order: one forward pass through a compressed stream
        members = sorted((listing[name] for name in chosen), key=lambda m: m.offset_data)
        with tarfile.open(source, "r:*") as tf:
            for m in members:
                f = tf.extractfile(m)
                assert f is not None  # regular files only (see _tar_listing)
                decoded[_member_name(m.name)] = _decode(f.read(), m.name, source)
    else:
        for name in chosen:
            decoded[name] = _decode((source / name).read_bytes(), name, source)
    x = _to_tensor([decoded[name] for name in chosen], chosen, source)
    where = f"{source}" + (f" ({root})" if root else "")
    name = split or (PurePosixPath(root).name if root else None)
    return LabeledImages(x.contiguous(), y_all[pick].clone(), classes=classes, indices=pick, source=where,
                         title=imagefolder_title(classes, name, str(source)))
