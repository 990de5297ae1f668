"""Datasets on real data: CIFAR-10 (JPEG ImageFolder in a tar.gz), MNIST (IDX), scikit-learn digits.

Every check compares against something read independently (tarfile + PIL, gzip + struct, the
published MNIST class counts, scikit-learn's arrays), never against the loaders' own output.
"""

from __future__ import annotations

import gzip
import io
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import shared_path
from flatplug.sources import (IDXError, LabeledImages, balanced_subset, load_digits, load_imagefolder,
                              load_mnist, read_idx, to_loader)
from flatplug.sources import imagefolder as imagefolder_module

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: The official MNIST test set's class counts (LeCun et al.), digits 0..9.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def cifar_tar() -> Path:
    return shared_path("data", "cifar10", "test.tar.gz")


@pytest.fixture(scope="module")
def cifar_members(cifar_tar: Path) -> dict[str, bytes]:
    """Every image of the test archive, read with tarfile directly: relative name -> JPEG bytes."""
    out = {}
    with tarfile.open(cifar_tar) as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".jpg"):
                out[m.name] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def cifar200(cifar_tar: Path) -> LabeledImages:
    return load_imagefolder(cifar_tar, n=200, seed=0)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    return shared_path("data", "mnist")


@pytest.fixture(scope="module")
def mnist_raw(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set parsed by hand from the IDX bytes (gzip + struct)."""
    img = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    lab = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    magic, n, rows, cols = struct.unpack(">IIII", img[:16])
    assert (magic, n, rows, cols) == (2051, 10000, 28, 28)
    magic, n_lab = struct.unpack(">II", lab[:8])
    assert (magic, n_lab) == (2049, 10000)
    return (np.frombuffer(img, np.uint8, offset=16).reshape(n, rows, cols),
            np.frombuffer(lab, np.uint8, offset=8))


# -- CIFAR-10 from the tar.gz -------------------------------------------------------------


def test_cifar_subset_shape_range_balance(cifar200: LabeledImages) -> None:
    x, y = cifar200
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (200,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.max()) > 0.9 and float(x.min()) < 0.1  # real photos span the range (not e.g. /255 twice)
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10
    assert cifar200.classes == CIFAR_CLASSES  # alphabetical: airplane=0 ... truck=9
    assert len(set(cifar200.indices.tolist())) == 200


def test_cifar_pixels_and_labels_match_the_archive(cifar200: LabeledImages, cifar_members: dict[str, bytes]) -> None:
    """Each chosen image equals the JPEG decoded independently, and its label is its folder's rank."""
    names = sorted(cifar_members)
    assert len(names) == 10000
    folders = sorted({n.split("/")[1] for n in names})
    assert folders == CIFAR_CLASSES
    x, y = cifar200
    for k in range(0, 200, 7):
        name = names[int(cifar200.indices[k])]
        assert int(y[k]) == folders.index(name.split("/")[1])
        ref = np.asarray(Image.open(io.BytesIO(cifar_members[name])).convert("RGB"), dtype=np.float32) / 255.0
        assert torch.equal(x[k], torch.from_numpy(ref).permute(2, 0, 1))


def test_cifar_deterministic_and_seeded(cifar_tar: Path, cifar200: LabeledImages) -> None:
    again = load_imagefolder(cifar_tar, n=200, seed=0)
    assert torch.equal(again.x, cifar200.x) and torch.equal(again.y, cifar200.y)
    other = load_imagefolder(cifar_tar, n=200, seed=1)
    assert torch.bincount(other.y, minlength=10).tolist() == [20] * 10
    overlap = len(set(other.indices.tolist()) & set(cifar200.indices.tolist()))
    assert overlap < 40  # 200 of 10,000 chosen twice at random: ~4 shared expected
    assert load_imagefolder(cifar_tar, n=200, seed=0, split="test").indices.tolist() == cifar200.indices.tolist()


def test_cifar_decodes_only_the_chosen_images(cifar_tar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = imagefolder_module._decode
    monkeypatch.setattr(imagefolder_module, "_decode", lambda *a: calls.append(a[1]) or real(*a))
    data = load_imagefolder(cifar_tar, n=30, seed=3)
    assert len(calls) == 30 and data.x.shape[0] == 30


def test_cifar_unknown_split_and_too_many(cifar_tar: Path) -> None:
    with pytest.raises(ValueError, match=r"split: no folder named 'val'.*'test'"):
        load_imagefolder(cifar_tar, n=10, split="val")
    with pytest.raises(ValueError, match=r"asked for 10001 samples but the dataset has only 10000"):
        load_imagefolder(cifar_tar, n=10001)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory, cifar_members: dict[str, bytes]) -> Path:
    """A real-image tree with two splits: <root>/{train,test}/<class>/*.jpg, 3 classes x 4 images each."""
    root = tmp_path_factory.mktemp("tree")
    names = sorted(cifar_members)
    for split, offset in (("train", 0), ("test", 4)):
        for cls in ("cat", "airplane", "ship"):
            mine = [n for n in names if n.split("/")[1] == cls][offset:offset + 4]
            for n in mine:
                dest = root / split / cls / Path(n).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(cifar_members[n])
    return root


def test_folder_and_tar_agree(small_tree: Path, tmp_path: Path, cifar_members: dict[str, bytes]) -> None:
    from_folder = load_imagefolder(small_tree / "test", seed=0)  # <class>/<image> layout
    tar_path = tmp_path / "tree.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(small_tree, arcname=".")  # members named ./train/cat/...
    from_tar = load_imagefolder(tar_path, seed=0, split="test")
    assert from_folder.classes == from_tar.classes == ["airplane", "cat", "ship"]
    assert torch.equal(from_folder.x, from_tar.x) and torch.equal(from_folder.y, from_tar.y)
    assert torch.bincount(from_folder.y).tolist() == [4, 4, 4]
    # the pixels are those of the original JPEGs of each image's own class
    names = sorted(cifar_members)
    for k in range(12):
        cls = from_folder.classes[int(from_folder.y[k])]
        candidates = [n for n in names if n.split("/")[1] == cls][4:8]
        refs = [torch.from_numpy(np.asarray(Image.open(io.BytesIO(cifar_members[n])).convert("RGB"),
                                            dtype=np.float32) / 255.0).permute(2, 0, 1) for n in candidates]
        assert any(torch.equal(from_folder.x[k], r) for r in refs)


def test_several_splits_need_a_choice(small_tree: Path) -> None:
    with pytest.raises(ValueError, match=r"several folders \('test', 'train'\).*split="):
        load_imagefolder(small_tree)
    train = load_imagefolder(small_tree, split="train")
    assert train.x.shape == (12, 3, 32, 32)


def test_imagefolder_bad_inputs(tmp_path: Path, small_tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder or archive"):
        load_imagefolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_imagefolder(tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next((small_tree / "test" / "cat").iterdir()), flat / "a.jpg")
    with pytest.raises(ValueError, match="no images in class folders"):
        load_imagefolder(flat)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(b"this is not a tar archive" * 40)[:200])
    with pytest.raises(ValueError, match="cannot read the archive"):
        load_imagefolder(broken)
    mixed = tmp_path / "mixed"
    shutil.copytree(small_tree / "test", mixed)
    big = mixed / "cat" / "big.png"
    Image.new("RGB", (40, 40), (10, 20, 30)).save(big)
    with pytest.raises(ValueError, match=r"images differ in size.*resize"):
        load_imagefolder(mixed)
    bad = mixed / "cat" / "bad.jpg"
    big.unlink()
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image 'cat/bad.jpg'"):
        load_imagefolder(mixed)


def test_grey_png_folder_matches_mnist(tmp_path: Path, mnist_raw: tuple[np.ndarray, np.ndarray]) -> None:
    """Grey PNGs written from the raw IDX bytes come back as [N, 1, 28, 28] with the same pixels."""
    images, labels = mnist_raw
    for i in range(30):
        folder = tmp_path / f"digit_{labels[i]}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:03d}.png")
    data = load_imagefolder(tmp_path)
    assert data.x.shape == (30, 1, 28, 28)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    for k in range(30):
        name = data.classes[int(data.y[k])]
        src = int(Path(files[int(data.indices[k])]).stem)  # indices: positions in the sorted file list
        assert name == f"digit_{labels[src]}"
        assert torch.equal(data.x[k, 0], torch.from_numpy(images[src].astype(np.float32) / 255.0))


# -- MNIST from the IDX files ---------------------------------------------------------------


def test_mnist_full_test_set(mnist_dir: Path, mnist_raw: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data = load_mnist(mnist_dir)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert abs(float(x.mean()) - 0.1325) < 0.002  # the well-known MNIST test mean (0.1325)
    images, labels = mnist_raw
    order = data.indices.numpy()
    assert np.array_equal(y.numpy(), labels[order].astype(np.int64))
    assert torch.equal(x[:, 0], torch.from_numpy(images[order].astype(np.float32) / 255.0))


def test_mnist_balanced_subset(mnist_dir: Path) -> None:
    x, y = data = load_mnist(mnist_dir, n=500, seed=0)
    assert x.shape == (500, 1, 28, 28)
    assert torch.bincount(y, minlength=10).tolist() == [50] * 10
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert 0.10 < float(x.mean()) < 0.17  # per-image means have sd ~0.04: 500 of them give ~0.002
    assert torch.equal(load_mnist(mnist_dir, n=500, seed=0).x, x)
    assert load_mnist(mnist_dir, n=500, seed=1).indices.tolist() != data.indices.tolist()
    with pytest.raises(FileNotFoundError, match=r"no images file for this split; expected train-images-idx3-ubyte"):
        load_mnist(mnist_dir, split="train")


def _write_idx(path: Path, raw: bytes, *, gz: bool) -> Path:
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def test_idx_header_validation(tmp_path: Path, mnist_dir: Path) -> None:
    raw = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    ok = read_idx(_write_idx(tmp_path / "labels", raw, gz=False))
    assert ok.shape == (10000,) and np.array_equal(ok, np.frombuffer(raw, np.uint8, offset=8))
    with pytest.raises(IDXError, match=r"truncated: the header declares shape \[10000\].*holds 9000"):
        read_idx(_write_idx(tmp_path / "short.gz", raw[:8 + 9000], gz=True))
    with pytest.raises(IDXError, match="trailing bytes"):
        read_idx(_write_idx(tmp_path / "long", raw + b"\x00", gz=False))
    with pytest.raises(IDXError, match="not an IDX file"):
        read_idx(_write_idx(tmp_path / "png", b"\x89PNG\r\n\x1a\n" + raw[8:], gz=False))
    with pytest.raises(IDXError, match="too short"):
        read_idx(_write_idx(tmp_path / "tiny", b"\x00\x00", gz=False))
    with pytest.raises(IDXError, match=r"truncated header: 3 dimensions need 16 bytes"):
        read_idx(_write_idx(tmp_path / "hdr", b"\x00\x00\x08\x03" + b"\x00" * 6, gz=False))
    cut = gzip.compress(raw)[:500]
    with pytest.raises(IDXError, match="gzip stream is corrupt or truncated"):
        read_idx(_write_idx(tmp_path / "cut.gz", cut, gz=False))
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


def test_mnist_mismatched_files(tmp_path: Path, mnist_dir: Path) -> None:
    images = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    head = struct.pack(">IIII", 2051, 100, 28, 28)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(head + images[16:16 + 100 * 784])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(IDXError, match="holds 100 images but t10k-labels-idx1-ubyte holds 10000 labels"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 100) + labels[8:108])
    x, y = data = load_mnist(tmp_path, n=20)  # the plain (un-gzipped) files work too
    expected = torch.tensor(list(labels[8:108]), dtype=torch.long)[data.indices]
    assert x.shape == (20, 1, 28, 28) and torch.equal(y, expected)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_mnist(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(ValueError, match="split: expected 'test' or 'train'"):
        load_mnist(tmp_path, split="val")


# -- scikit-learn digits ----------------------------------------------------------------------


def test_digits_splits() -> None:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    counts = np.bincount(bunch.target)
    test, train, every = load_digits(), load_digits(split="train"), load_digits(split="all")
    assert test.x.shape == (int((counts // 4).sum()), 1, 8, 8)  # every 4th sample of each class
    assert test.x.shape[0] + train.x.shape[0] == every.x.shape[0] == 1797
    assert torch.bincount(test.y).tolist() == (counts // 4).tolist()
    for d in (test, train, every):
        assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
        assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
        assert torch.equal(d.x * 16, (d.x * 16).round())  # 0..16 counts, scaled by 1/16
    order = every.indices.numpy()
    assert torch.equal(every.x[:, 0], torch.from_numpy(bunch.images[order].astype(np.float32) / 16))
    assert np.array_equal(every.y.numpy(), bunch.target[order])
    # the split is fixed: independent of the subset seed
    assert sorted(load_digits(seed=5).indices.tolist()) == sorted(test.indices.tolist())


def test_digits_subset_and_errors() -> None:
    x, y = load_digits(n=100, split="train", seed=2)
    assert x.shape == (100, 1, 8, 8) and torch.bincount(y).tolist() == [10] * 10
    with pytest.raises(ValueError, match="split: expected one of 'test', 'train', 'all'"):
        load_digits(split="val")
    with pytest.raises(ValueError, match=r"asked for 5000 samples but the dataset has only 1797"):
        load_digits(n=5000, split="all")


# -- balanced_subset, to_loader, LabeledImages ------------------------------------------------


def test_balanced_subset_remainder_and_shortfall() -> None:
    y = torch.arange(10).repeat(10)  # 10 classes x 10
    idx = balanced_subset(y, 25, seed=0)
    counts = torch.bincount(y[idx], minlength=10)
    assert sorted(counts.tolist()) == [2] * 5 + [3] * 5
    assert len(set(idx.tolist())) == 25
    assert torch.equal(idx, balanced_subset(y, 25, seed=0))
    assert not torch.equal(idx, balanced_subset(y, 25, seed=1))
    # a class with too few samples gives its share to the others
    y2 = torch.tensor([0, 0] + [1] * 50 + [2] * 50)
    assert torch.bincount(y2[balanced_subset(y2, 30, seed=0)]).tolist() == [2, 14, 14]
    assert sorted(balanced_subset(y2, None, seed=0).tolist()) == list(range(102))
    assert sorted(balanced_subset(np.array([3, 3, 7]), 3).tolist()) == [0, 1, 2]


def test_balanced_subset_errors() -> None:
    y = torch.arange(3).repeat(4)
    with pytest.raises(ValueError, match="asked for 13 samples but the dataset has only 12"):
        balanced_subset(y, 13, 0)
    with pytest.raises(ValueError, match="n: expected at least 1 sample, got 0"):
        balanced_subset(y, 0, 0)
    with pytest.raises(TypeError, match="n: expected an integer"):
        balanced_subset(y, 2.5, 0)
    with pytest.raises(ValueError, match="integer class labels"):
        balanced_subset(torch.rand(5), 2, 0)
    with pytest.raises(ValueError, match="empty"):
        balanced_subset(torch.zeros(0, dtype=torch.long), 1, 0)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 12), min_size=1, max_size=6), frac=st.floats(0.0, 1.0), seed=st.integers(0, 9))
def test_balanced_subset_is_max_min_fair(counts: list[int], frac: float, seed: int) -> None:
    """Shares differ by at most one, except that a class may be short because it ran out."""
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)]).long()
    if y.numel() == 0:
        return
    n = max(1, round(frac * y.numel()))
    idx = balanced_subset(y, n, seed)
    assert idx.numel() == n and len(set(idx.tolist())) == n
    got = torch.bincount(y[idx], minlength=len(counts)).tolist()
    present = [k for k, c in enumerate(counts) if c > 0]
    for a in present:
        for b in present:
            assert got[a] <= counts[a]
            if got[a] < got[b] - 1:
                assert got[a] == counts[a]  # a is short only because it has nothing left


def test_to_loader_and_pickling(cifar200: LabeledImages) -> None:
    x, y = cifar200
    batches = to_loader(x, y, 64)
    assert [b[0].shape[0] for b in batches] == [64, 64, 64, 8]
    assert torch.equal(torch.cat([b[0] for b in batches]), x) and torch.equal(torch.cat([b[1] for b in batches]), y)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        to_loader(x, y, 0)
    with pytest.raises(ValueError, match="200 samples but y has 3 labels"):
        to_loader(x, y[:3], 10)
    back = pickle.loads(pickle.dumps(cifar200))
    assert isinstance(back, LabeledImages) and back.classes == CIFAR_CLASSES
    assert torch.equal(back.x, x) and torch.equal(back.indices, cifar200.indices)
    assert cifar200.x is cifar200[0] and cifar200.y is cifar200[1]
    from flatplug._data import Batches  # the measures' data wrapper takes it as one (x, y) batch

    assert Batches(cifar200, unit_range=True).num_samples == 200
    assert Batches(batches).num_samples == 200


def test_datasets_carry_their_real_names(cifar200: LabeledImages, mnist_dir: Path, small_tree: Path) -> None:
    """Guards against reports naming data by loader and file (``imagefolder[test.tar.gz]``) instead of the
    name people use (issue 11): CIFAR-10 is recognised by its ten class folders, splits by folder names."""
    assert cifar200.title == "CIFAR-10 test set"
    assert load_mnist(mnist_dir, n=20).title == "MNIST test set"
    assert load_digits(n=20).title == "digits (scikit-learn) test set"
    assert load_digits(n=20, split="train").title == "digits (scikit-learn) training set"
    tree = load_imagefolder(small_tree, split="train")  # three of CIFAR-10's classes: not CIFAR-10
    assert tree.title == f"images from {small_tree.name} training set"
    import copy

    assert copy.deepcopy(cifar200).title == "CIFAR-10 test set"  # survives pickling/copying
